"""The entry-point loader: discovery, families, and errors that name the offending package."""
import importlib.metadata
import types

import pytest

import magvit_pl.tasks as T
from magvit_pl.run.errors import UserError
from magvit_pl.tasks import Task, TaskError, discover_tasks, get_task, resolve_tasks, task_table, validate_task

BUILTIN = {
    "frame_prediction": "prediction", "class_frame_prediction": "prediction",
    "frame_interpolation": "interpolation",
    "outpainting_central": "outpainting", "outpainting_vertical": "outpainting",
    "outpainting_horizontal": "outpainting", "outpainting_dynamic": "outpainting",
    "inpainting_central": "inpainting", "inpainting_dynamic": "inpainting",
    "class_generation": "generation",
}


def test_all_ten_builtins_discovered_from_magvit_pl():
    specs = discover_tasks()
    assert set(BUILTIN) <= set(specs)
    for name in BUILTIN:
        assert specs[name].package == "magvit-pl"
        cls = specs[name].load()
        assert cls.name == name and cls.family == BUILTIN[name]
        assert isinstance(cls.description, str) and cls.description and "\n" not in cls.description
    rows = {r.name: r for r in task_table()}
    assert rows["class_generation"].uses_class and rows["class_frame_prediction"].uses_class
    assert not rows["frame_prediction"].uses_class
    assert rows["outpainting_dynamic"] == ("outpainting_dynamic", "outpainting", "magvit-pl", False,
                                           T.discover_tasks()["outpainting_dynamic"].load().description)


def test_resolve_by_name_and_family():
    assert [t.name for t in resolve_tasks("outpainting")] == [
        "outpainting_central", "outpainting_dynamic", "outpainting_horizontal", "outpainting_vertical"]
    fp = resolve_tasks("prediction", num_cond_frames=5)
    assert [t.name for t in fp] == ["class_frame_prediction", "frame_prediction"]
    assert [t.num_cond_frames for t in fp] == [5, 5]
    (one,) = resolve_tasks("frame_interpolation")
    assert one.name == "frame_interpolation"
    ip = resolve_tasks("inpainting", pad_value=0.0)
    assert [t.pad_value for t in ip] == [0.0, 0.0]
    # pad_value reaches the outpainting tasks that take it
    op = resolve_tasks("outpainting", pad_value=0.5)
    assert all(t.pad_value == 0.5 for t in op)
    assert get_task("outpainting_central", padding="constant").padding == "constant"


def test_bad_task_arguments():
    with pytest.raises(TaskError, match="does not take padding; it takes: latent_rule, pad_value"):
        get_task("inpainting_central", padding="edge")
    with pytest.raises(TaskError, match="no task of family 'prediction' takes pad_value"):
        resolve_tasks("prediction", pad_value=0.0)
    with pytest.raises(TaskError, match="num_cond_frames must be an integer >= 1"):
        get_task("frame_prediction", num_cond_frames=0)


def test_unknown_name_lists_tasks_and_families():
    with pytest.raises(TaskError) as err:
        get_task("outpaint_everything")
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    assert "unknown task 'outpaint_everything'" in msg
    for name in BUILTIN:
        assert name in msg
    for fam in ("generation", "inpainting", "interpolation", "outpainting", "prediction"):
        assert fam in msg
    with pytest.raises(TaskError, match="families: generation, inpainting, interpolation, outpainting, prediction"):
        resolve_tasks("nonsense")


# ------------------------------------------------------------------------------- fake plugins
class FakeEP:
    """Stands in for importlib.metadata.EntryPoint; records whether it was imported."""

    def __init__(self, name, obj, package, value=None, group="magvit_pl.tasks"):
        self.name, self.obj, self.group = name, obj, group
        self.value = value or f"{package.replace('-', '_')}.tasks:{getattr(obj, '__name__', 'obj')}"
        self.dist = types.SimpleNamespace(name=package)
        self.loaded = 0

    def load(self):
        self.loaded += 1
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


def make_task(task_name, fam="fake"):
    class Fake(Task):
        name = task_name
        family = fam
        description = "a fake task"

        def build_condition(self, video, generator=None):
            raise AssertionError("not used here")

    return Fake


@pytest.fixture
def fake_eps(monkeypatch):
    eps = []

    def entry_points(group=None, **_):
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return eps


def test_discovery_is_lazy_and_loads_on_demand(fake_eps):
    ep = FakeEP("alpha", make_task("alpha"), "pkg-a")
    fake_eps.append(ep)
    specs = discover_tasks()
    assert list(specs) == ["alpha"] and specs["alpha"].package == "pkg-a" and ep.loaded == 0
    assert get_task("alpha").family == "fake" and ep.loaded == 1


def test_duplicate_names_from_two_packages(fake_eps):
    fake_eps += [FakeEP("alpha", make_task("alpha"), "pkg-a"), FakeEP("alpha", make_task("alpha"), "pkg-b")]
    with pytest.raises(TaskError, match="'alpha' is registered twice: by package 'pkg-a'.*by package 'pkg-b'"):
        discover_tasks()
    with pytest.raises(TaskError, match="pkg-a.*pkg-b"):
        task_table()


def test_same_entry_point_seen_twice_is_kept_once(fake_eps):
    cls = make_task("alpha")
    fake_eps += [FakeEP("alpha", cls, "pkg-a"), FakeEP("alpha", cls, "pkg-a")]
    assert list(discover_tasks()) == ["alpha"]


class NoName(Task):
    family = "fake"
    description = "x"

    def build_condition(self, video, generator=None):
        return None


class Abstract(Task):
    name = "abstract"
    family = "fake"
    description = "forgot build_condition"


class Duck:
    name = "duck"
    family = "fake"
    description = "duck-typed, no base class"
    uses_class = False

    def build_condition(self, video, generator=None): ...

    def latent_mask(self, pixel_mask, downsample): ...

    def metrics(self): ...


@pytest.mark.parametrize("obj,reason", [
    (NoName, "'name' must be a non-empty identifier"),
    (Abstract, "abstract method"),
    (Duck, "must name a subclass of magvit_pl.tasks.Task"),
    (lambda: None, "must name a class"),
    (ImportError("no module named torchvision"), "could not be loaded.*torchvision"),
])
def test_broken_plugin_is_rejected_naming_its_package(fake_eps, obj, reason):
    name = getattr(obj, "name", None) or "broken"
    fake_eps += [FakeEP("alpha", make_task("alpha"), "pkg-good"), FakeEP(name, obj, "pkg-broken")]
    with pytest.raises(TaskError, match=f"package 'pkg-broken'.*{reason}|{reason}.*pkg-broken"):
        get_task(name)
    with pytest.raises(TaskError, match="pkg-broken"):
        task_table()
    assert get_task("alpha").name == "alpha"  # the good plugin still loads


def test_entry_point_name_must_equal_class_name(fake_eps):
    fake_eps.append(FakeEP("beta", make_task("gamma"), "pkg-c"))
    with pytest.raises(TaskError, match="registered as 'beta' but its class declares name 'gamma'.*pkg-c|pkg-c.*'beta'.*'gamma'"):
        get_task("beta")


def test_validate_task_requires_a_task_subclass():
    class FullDuck(Duck):
        def update_metrics(self, metrics, generated, real, condition): ...

    with pytest.raises(TaskError, match="package 'pkg'.*must name a subclass of magvit_pl.tasks.Task"):
        validate_task(FullDuck, "pkg")  # every method present, but not a Task: refused
    with pytest.raises(TaskError, match="package 'pkg-x'"):
        validate_task(Duck, "pkg-x")
    good = make_task("alpha")
    assert validate_task(good, "pkg") is good


class Strided(Task):
    """A plugin with one option of its own and neither num_cond_frames nor latent_rule."""

    name = "strided"
    family = "fake"
    description = "declares only stride"

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    def build_condition(self, video, generator=None):
        raise AssertionError("not used here")


def test_shared_options_reach_only_the_tasks_that_declare_them(fake_eps):
    fake_eps += [FakeEP("strided", Strided, "pkg-s"), FakeEP("alpha", make_task("alpha"), "pkg-a")]
    shared = {"num_cond_frames": 5, "latent_rule": "all"}
    plugin = get_task("strided", shared=shared, stride=3)
    assert (plugin.stride, plugin.latent_rule) == (3, "task") and not hasattr(plugin, "num_cond_frames")
    alpha = get_task("alpha", shared=shared)  # the base constructor declares latent_rule only
    assert alpha.latent_rule == "all" and not hasattr(alpha, "num_cond_frames")
    with pytest.raises(TaskError, match="task 'strided' \\(package 'pkg-s'\\) does not take num_cond_frames; it takes: stride"):
        get_task("strided", num_cond_frames=5)
    assert T.declared_options(Strided) == ("stride",)


def test_shared_options_on_the_builtins():
    shared = {"num_cond_frames": 2, "latent_rule": "any"}
    fp, opc, cg = (get_task(n, shared=shared) for n in ("frame_prediction", "outpainting_central", "class_generation"))
    assert (fp.num_cond_frames, fp.latent_rule) == (2, "any")
    assert opc.latent_rule == "any" and not hasattr(opc, "num_cond_frames")
    assert cg.latent_rule == "task" and not hasattr(cg, "num_cond_frames")
