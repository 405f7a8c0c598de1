"""Optional Hugging Face Hub transport for model folders (``pip install "magvit-pl[hub]"``).

The plain file API of ``huggingface_hub`` (``snapshot_download``, ``HfApi.upload_folder``) moves the folder that
:func:`~magvit_pl.pretrained.save_pretrained` writes, unchanged, so a folder from the Hub is loaded by exactly the
checked, allow-listed path a local folder is. ``PyTorchModelHubMixin`` was not used: it would have to be
inherited by the ``nn.Module`` classes (making ``huggingface_hub`` a hard dependency of ``magvit_pl.models``), it
rebuilds a model as ``cls(**config)`` from its own ``config.json`` rather than through the model allow-list, and
it knows nothing of the MTM's second model (its tokenizer) or its task table.

Only the files a folder may hold are downloaded (never ``*.bin`` / ``*.ckpt`` pickles). The package is imported
when first needed; without it, or without network, each call ends with one line.
"""
from __future__ import annotations

import os
from pathlib import Path

from magvit_pl.run.errors import UserError

INSTALL = 'pip install "magvit-pl[hub]" (or: pip install huggingface_hub)'


def _hub():
    try:
        import huggingface_hub  # optional (the [hub] extra)
    except ImportError:
        raise UserError(f"the Hugging Face Hub needs the huggingface_hub package: {INSTALL}; "
                        "or download the folder yourself and pass its path") from None
    return huggingface_hub


def allowed_patterns() -> list[str]:
    from magvit_pl.pretrained import FILES, TOKENIZER_DIR  # lazy: magvit_pl.pretrained imports this module

    return [*FILES, *(f"{TOKENIZER_DIR}/{name}" for name in FILES)]


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub model repository ``repo_id`` (downloaded, or from the local cache when
    offline: ``HF_HUB_OFFLINE=1``)."""
    hub = _hub()
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=allowed_patterns(), library_name="magvit-pl"))
    except Exception as err:  # noqa: BLE001 - offline, not found, gated, no network: many exception types
        raise UserError(f"cannot fetch {repo_id!r} from the Hugging Face Hub ({_reason(err)}); "
                        "check the id and the network, or pass a local folder") from None


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload magvit-pl model") -> str:
    """Upload a folder written by ``save_pretrained`` / ``export --format safetensors`` to Hub repository
    ``repo_id`` (created if needed); returns the commit URL."""
    from magvit_pl.pretrained import read_config  # lazy: magvit_pl.pretrained imports this module

    read_config(folder)  # refuse to publish something that would not load
    hub = _hub()
    try:
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=allowed_patterns(), commit_message=commit_message)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot upload {folder} to the Hugging Face Hub repository {repo_id!r} ({_reason(err)})") from None
    return str(getattr(info, "commit_url", info))


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
