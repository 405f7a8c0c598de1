"""Fixtures for the reliability tests: hostile media files made with PyAV (or by hand) in a few
milliseconds each, and a way to make the disk "fill up" in the middle of a write."""
from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]


def _gif_header_only(width: int, height: int) -> bytes:
    """A valid 35-byte GIF whose logical screen is ``width x height`` but whose one image is
    1x1: FFmpeg's GIF decoder allocates the whole screen (16000² BGRA = 1 GB) for it."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"  # 2-colour palette
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # 1x1, LZW data
    return b"GIF89a" + screen + image + b"\x3b"


def _rotate_like_a_phone(path: Path) -> None:
    """Set the mp4 track matrix (tkhd) to the one a phone writes for portrait video: display the
    stored frames rotated 90 degrees clockwise (ffprobe: 'rotation of -90.00 degrees')."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd") - 4
    assert box >= 0 and data[box + 8] == 0  # version-0 tkhd: the matrix sits at bytes 48..84 of the box
    data[box + 48 : box + 84] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


#: hostile (and merely unusual) inputs: name -> file name on disk
HOSTILE = {
    "truncated": "truncated.mp4",  # 60 frames cut in half
    "zero_length": "zero_length.mp4",
    "text_named_mp4": "text_named.mp4",
    "mp4_named_gif": "mp4_named.gif",  # FFmpeg probes the content, not the name
    "gif_header_16000": "screen_16000.gif",  # header claims 16000x16000 (valid GIF, 1x1 image)
    "y4m_header_20000_named_mp4": "y4m_20000.mp4",  # raw YUV4MPEG header claiming 20000x20000
    "real_4000x3000": "big_4000x3000.mp4",  # one real 12-megapixel frame
    "aspect_4096x2": "strip_4096x2.mkv",  # upscaling a 2-pixel-high strip would make huge frames
    "one_by_one": "one_by_one.mp4",
    "ten_bit": "ten_bit.mp4",  # H.264 High 10, yuv420p10le
    "vfr": "vfr.mp4",
    "rotated": "rotated.mp4",  # phone portrait: rotate 90 degrees clockwise on display
    "audio_only": "audio_only.mp4",
    "long_cut_tail": "long_cut_tail.mp4",  # 400 frames; the second half is cut off
    "ten_hours": "ten_hours.mp4",  # 9 frames at 25 fps, then one at 10 h (a 10-hour file)
}


def make_hostile(kind: str, folder: Path, _pattern: Callable[..., np.ndarray], _write: Callable[..., Path]) -> Path:
    """Write the file for ``kind`` (a key of HOSTILE) into ``folder`` and return its path (``_pattern`` and
    ``_write``: the root conftest's ``pattern`` and this folder's ``write_clip``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HOSTILE[kind]
    if kind == "truncated":
        data = _write(folder / "_t.mp4", _pattern(60, 32, 32, seed=1)).read_bytes()
        (folder / "_t.mp4").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "text_named_mp4":
        path.write_text("not a video, just some text\n" * 40)
    elif kind == "mp4_named_gif":
        _write(path, _pattern(12, 32, 48, seed=2), fmt="mp4")
    elif kind == "gif_header_16000":
        path.write_bytes(_gif_header_only(16000, 16000))
    elif kind == "y4m_header_20000_named_mp4":
        path.write_bytes(b"YUV4MPEG2 W20000 H20000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 4096)
    elif kind == "real_4000x3000":
        _write(path, np.full((1, 3000, 4000, 3), 90, np.uint8), pix_fmt="yuv420p")
    elif kind == "aspect_4096x2":
        _write(path, _pattern(12, 2, 4096, seed=3), codec="ffv1", pix_fmt="yuv444p")
    elif kind == "one_by_one":
        _write(path, np.full((12, 1, 1, 3), (200, 40, 90), np.uint8))
    elif kind == "ten_bit":
        try:
            _write(path, _pattern(12, 32, 48, seed=4), pix_fmt="yuv420p10le")
        except av.error.FFmpegError as err:  # an 8-bit-only libx264 build
            pytest.skip(f"this PyAV build cannot encode 10-bit H.264: {err}")
    elif kind == "vfr":
        _write(path, _pattern(12, 32, 48, seed=5), pts_ms=[i * 40 + (i % 3) * 13 for i in range(12)])
    elif kind == "rotated":
        frames = np.zeros((12, 32, 48, 3), np.uint8)
        frames[:, :8, :8] = 255  # a white block in the stored top-left corner
        _write(path, frames)
        _rotate_like_a_phone(path)
    elif kind == "audio_only":
        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    elif kind == "long_cut_tail":
        data = _write(folder / "_l.mp4", _pattern(400, 16, 16, seed=6), faststart=True).read_bytes()
        (folder / "_l.mp4").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "ten_hours":
        _write(path, _pattern(10, 16, 16, seed=7), pts_ms=[i * 40 for i in range(9)] + [36_000_000])
    else:
        raise KeyError(kind)
    return path


@pytest.fixture
def hostile(pattern, write_clip) -> Callable[[str, Path], Path]:
    """``hostile(kind, folder) -> path``: write one hostile file (kinds: the keys of HOSTILE)."""
    return lambda kind, folder: make_hostile(kind, folder, pattern, write_clip)


@pytest.fixture
def hostile_kinds() -> dict[str, str]:
    return dict(HOSTILE)


@pytest.fixture
def write_clip(write_raw) -> Callable[..., Path]:
    """``write_clip(path, frames, codec='libx264', pix_fmt='yuv444p', fps=25, pts_ms=None, fmt=None, faststart=False)``:
    the root ``write_raw`` with 4:4:4 chroma and x264's fastest preset by default."""

    def write(path: Path, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv444p", **kwargs) -> Path:
        options = {"preset": "ultrafast"} if codec == "libx264" else None
        return write_raw(path, frames, codec=codec, pix_fmt=pix_fmt, options=options, **kwargs)

    return write


@contextlib.contextmanager
def _file_size_limit(nbytes: int) -> Iterator[None]:
    """Make the kernel refuse (EFBIG) every write that would grow a file of this process past
    ``nbytes`` (RLIMIT_FSIZE): a real mid-write failure, whatever code does the writing."""
    import resource
    import signal

    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # default action kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.fixture
def file_size_limit():
    """``with file_size_limit(n):`` writes past n bytes fail with OSError(EFBIG) (Linux/macOS only)."""
    if not sys.platform.startswith(("linux", "darwin")):
        pytest.skip("RLIMIT_FSIZE is POSIX-only")
    return _file_size_limit


class FaultFit:
    """Runs ``cli.py fit`` in a subprocess (so it can be SIGKILLed or crash for real), with fault-injecting
    callbacks written as a module into ``folder`` and added through a YAML config."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": "1"}
        self.env.pop("MAGVIT_PL_RUN_DIR", None)

    def callback(self, module: str, source: str, class_name: str, **init_args) -> Path:
        """Write ``source`` as ``module.py``; return a YAML that adds ``module.class_name(**init_args)`` to the trainer."""
        (self.folder / f"{module}.py").write_text(source)
        args = "".join(f"        {k}: {v}\n" for k, v in init_args.items())
        path = self.folder / f"{module}.yaml"
        path.write_text(f"trainer:\n  callbacks:\n    - class_path: {module}.{class_name}\n      init_args:\n{args}")
        return path

    def run(self, runs: Path, args: list[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(REPO / "cli.py"), "fit", *args, "--runs_root", str(runs)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=self.env, timeout=240)


@pytest.fixture
def fault_fit(tmp_path) -> FaultFit:
    return FaultFit(tmp_path)


# ------------------------------------------------------------------ untrusted checkpoints, CLI errors
MTM_CLASS = "magvit_pl.lit.mtm.MTMModule"


class TinyCheckpoints:
    """magvit-pl checkpoints made directly, without training: a tokenizer (8x32x32 clips -> 4x8x8 tokens, 16 codes)
    and a one-layer MTM on it, with hooks to plant hostile contents (a config gadget, odd hyper-parameters)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def tokenizer_model():
        import torch

        from magvit_pl.models.quantizers.vq import VectorQuantizer
        from magvit_pl.models.tokenizer import VQTokenizer

        torch.manual_seed(0)
        return VQTokenizer(base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, embedding_dim=8,
                           temporal_downsample=(True, False), quantizer=VectorQuantizer(16, 8))

    def tokenizer(self, name: str = "tokenizer.ckpt", config: dict | None = None, **extra) -> Path:
        import torch

        tok = self.tokenizer_model()
        state = {f"{prefix}{k}": v for prefix in ("tokenizer.", "ema_tokenizer.") for k, v in tok.state_dict().items()}
        ckpt = {"state_dict": state, "hyper_parameters": {"_class_path": "magvit_pl.lit.tokenizer.TokenizerModule", "lr": 1e-4},
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0,
                "magvit": {"kind": "tokenizer", "tokenizer_config": config or tok.init_config, "codebook_size": 16}, **extra}
        torch.save(ckpt, self.folder / name)
        return self.folder / name

    def mtm(self, name: str = "mtm.ckpt", tokenizer_config: dict | None = None, hparams: dict | None = None, num_frames: int = 8,
            **extra) -> Path:
        import torch

        from magvit_pl.lit.mtm import MTMModule
        from magvit_pl.models.transformer import TransformerConfig
        from magvit_pl.sampling import SamplingConfig

        model = MTMModule(tokenizer_ckpt=str(self.tokenizer("for_mtm.ckpt")), num_classes=8, num_frames=num_frames, resolution=32,
                          transformer=TransformerConfig(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64),
                          sampling=SamplingConfig(steps=2))
        model.configure_model()
        ckpt = {"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": MTM_CLASS, **dict(model.hparams), **(hparams or {})},
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0}
        model.on_save_checkpoint(ckpt)
        if tokenizer_config is not None:
            ckpt["magvit"]["tokenizer_config"] = tokenizer_config
        ckpt.update(extra)
        torch.save(ckpt, self.folder / name)
        return self.folder / name

    def gadget(self, marker: Path) -> dict:
        """A valid tokenizer config with a command hidden in one list element: building it (old magvit-pl
        accepted any ``magvit_pl.`` callable) runs ``touch MARKER`` through magvit_pl.run.cli.run_function and os.system,
        and the model still builds (the call returns None, read as False)."""
        import copy

        config = copy.deepcopy(self.tokenizer_model().init_config)
        config["init_args"]["temporal_downsample"] = [
            {"class_path": "magvit_pl.run.cli.run_function",
             "init_args": {"name": "x", "target": "os:system", "args": ["--command", f"touch {marker}"]}},
            False,
        ]
        return config


@pytest.fixture
def checkpoints(tmp_path) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path / "ckpts")


def _run_cli(capsys, args: list) -> tuple[int, str]:
    """``magvit_pl.run.cli.main(args)`` in this process: (exit code, what it wrote to stderr)."""
    import logging

    from magvit_pl.run.cli import main

    capsys.readouterr()
    # Lightning adds stream handlers at import, bound to the sys.stderr of the test that first imported it (a
    # capture closed since): bind every such handler to this test's stream, as in a fresh process
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # (setStream would flush the closed one)
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.fixture
def cli_error(capsys) -> Callable[..., str]:
    """``cli_error(args, code=2) -> line``: run ``magvit_pl.run.cli.main(args)`` in-process, check that it exits with
    ``code``, printed no traceback and exactly one ``error:`` line; return that line."""

    def run(args: list, code: int = 2) -> str:
        exit_code, err = _run_cli(capsys, args)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert exit_code == code and len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    return run


@pytest.fixture
def cli_in_process(capsys) -> Callable[[list[str]], tuple[int, list[str]]]:
    """``cli_in_process(args) -> (exit code, stderr lines)``: ``cli.py ARGS`` through magvit_pl.run.cli.main,
    in this process."""

    def run(args: list) -> tuple[int, list[str]]:
        code, err = _run_cli(capsys, args)
        return code, err.strip().splitlines()

    return run
