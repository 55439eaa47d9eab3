"""The generated-array cache: keyed by spec, written atomically, never trusting a damaged file."""
import numpy as np
import pytest

from mmcourse.world import cache


def make_builder(calls):
    def build():
        calls.append(1)
        return {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "texts": np.array(["a red circle", "b"])}
    return build


SPEC = {"kind": "demo", "n": 2, "seed": 0}


def only_file(folder):
    (path,) = folder.glob("*.npz")
    return path


def test_second_call_reads_the_cache(tmp_path):
    calls = []
    first = cache.cached_arrays(SPEC, make_builder(calls), tmp_path)
    second = cache.cached_arrays(SPEC, make_builder(calls), tmp_path)
    assert len(calls) == 1
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    assert only_file(tmp_path).name.startswith("demo-")


def test_different_specs_get_different_files(tmp_path):
    calls = []
    cache.cached_arrays(SPEC, make_builder(calls), tmp_path)
    cache.cached_arrays({**SPEC, "seed": 1}, make_builder(calls), tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2


def test_key_ignores_dict_order_but_not_values():
    assert cache.spec_key({"kind": "a", "x": 1, "y": 2}) == cache.spec_key({"y": 2, "kind": "a", "x": 1})
    assert cache.spec_key({"kind": "a", "x": 1}) != cache.spec_key({"kind": "a", "x": 2})


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_file_is_rebuilt_not_trusted(tmp_path, damage):
    calls = []
    good = cache.cached_arrays(SPEC, make_builder(calls), tmp_path)
    path = only_file(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # a bit flip inside the stored image bytes keeps the zip readable
        offset = data.find(bytes(range(10, 20)))
        assert offset > 0
        data[offset] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a zip at all" * 10)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        again = cache.cached_arrays(SPEC, make_builder(calls), tmp_path)
    assert len(calls) == 2
    assert all(np.array_equal(good[k], again[k]) for k in good)
    assert cache.cached_arrays(SPEC, make_builder(calls), tmp_path) and len(calls) == 2  # repaired on disk


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cache.cached_arrays(SPEC, make_builder([]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_disabled_cache_touches_nothing(tmp_path):
    calls = []
    cache.cached_arrays(SPEC, make_builder(calls), tmp_path, enabled=False)
    cache.cached_arrays(SPEC, make_builder(calls), tmp_path, enabled=False)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_environment_variable_sets_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE_DIR", str(tmp_path / "elsewhere"))
    cache.cached_arrays(SPEC, make_builder([]))
    assert only_file(tmp_path / "elsewhere")


@pytest.mark.parametrize("spec", [{"n": 1}, "demo", {"kind": "demo", "f": object()}])
def test_bad_specs_are_rejected(spec, tmp_path):
    with pytest.raises(TypeError, match="spec"):
        cache.cached_arrays(spec, make_builder([]), tmp_path)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="build"):
        cache.cached_arrays(SPEC, lambda: {"bad": np.array([{"a": 1}], dtype=object)}, tmp_path)


def test_a_sound_file_of_another_spec_is_rebuilt_not_served(tmp_path):
    seed_one = cache.cached_arrays({**SPEC, "seed": 1}, lambda: {"seed": np.array([1])}, tmp_path)
    seed_one_path = only_file(tmp_path)
    seed_zero_path = seed_one_path.with_name(f"demo-{cache.spec_key(SPEC)}.npz")
    seed_one_path.rename(seed_zero_path)  # seed 1's file copied under seed 0's name
    with pytest.warns(RuntimeWarning, match=f"{seed_zero_path.name} was built from the spec .*\"seed\": 1"):
        seed_zero = cache.cached_arrays(SPEC, lambda: {"seed": np.array([0])}, tmp_path)
    assert seed_one["seed"][0] == 1 and seed_zero["seed"][0] == 0
    assert cache.cached_arrays(SPEC, make_builder([]), tmp_path)["seed"][0] == 0  # repaired on disk


def test_a_file_of_the_format_without_a_spec_is_rebuilt_quietly(tmp_path, recwarn):
    path = tmp_path / f"demo-{cache.spec_key(SPEC)}.npz"
    old = {"seed": np.array([7])}
    np.savez(path, **old, **{cache.CHECKSUM_KEY: np.array(cache.checksum(old))})  # sound, but no spec stored
    assert cache.cached_arrays(SPEC, lambda: {"seed": np.array([0])}, tmp_path)["seed"][0] == 0
    assert not recwarn.list


@pytest.mark.parametrize("name", [cache.CHECKSUM_KEY, cache.SPEC_KEY])
def test_reserved_names_are_refused(tmp_path, name):
    with pytest.raises(TypeError, match=name):
        cache.cached_arrays(SPEC, lambda: {name: np.zeros(1)}, tmp_path)


def test_a_cache_folder_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for configured in (blocker, blocker / "below"):
        monkeypatch.setenv("MMCOURSE_CACHE_DIR", str(configured))
        with pytest.raises(ValueError, match=f"MMCOURSE_CACHE_DIR=.* must name a folder .* {blocker} is a file"):
            cache.cached_arrays(SPEC, make_builder([]))
