"""Target profiles: the shipped ones load, and every mistake in a user's profile names its key."""

import dataclasses

import pytest
import yaml

from edgeprune.errors import UserError
from edgeprune.profiling.targets import MeasureSpec, Profile, TensorRTSpec, list_profiles, load_profile, profile_from_untrusted


def _shipped_dict() -> dict:
    data = load_profile("x86-cpu").to_dict()
    del data["source"]
    return data


def _write(tmp_path, data, name="custom.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_shipped_x86_cpu_loads_with_its_values():
    p = load_profile("x86-cpu")
    assert isinstance(p, Profile) and isinstance(p.measure, MeasureSpec)
    assert (p.name, p.backend, p.provider) == ("x86-cpu", "onnxruntime", "CPUExecutionProvider")
    assert (p.intra_op_threads, p.execution_mode, p.channel_step) == (1, "sequential", 16)
    assert isinstance(p.measure.max_seconds, float)
    assert p.source.endswith("x86-cpu.yaml")
    assert p.to_dict()["measure"]["min_runs"] == p.measure.min_runs


def test_list_profiles_is_sorted_and_contains_x86():
    names = [p.name for p in list_profiles()]
    assert "x86-cpu" in names and names == sorted(names)


def test_profile_by_path_roundtrips(tmp_path):
    path = _write(tmp_path, _shipped_dict())
    p = load_profile(path)
    assert p.source == path
    assert p.to_dict() == {**load_profile("x86-cpu").to_dict(), "source": path}


def test_unknown_target_lists_choices():
    with pytest.raises(UserError) as e:
        load_profile("foo")
    assert str(e.value) == (
        "unknown target 'foo'; choose one of: arm-cpu, arm-litert, jetson-orin, jetson-orin-int8, jetson-orin-nano, simulated, x86-cpu, x86-executorch, x86-openvino "
        "(run `edgeprune targets`)"
    )


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, {**_shipped_dict(), "intra_op_thread": 2})
    with pytest.raises(UserError) as e:
        load_profile(path)
    assert "'intra_op_thread'" in str(e.value) and path in str(e.value)


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    data = _shipped_dict()
    data["measure"]["warmup"] = 3
    with pytest.raises(UserError, match=r"'measure\.warmup'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("intra_op_threads", "one", "an integer"),
        ("intra_op_threads", True, "an integer"),  # YAML `yes` is a bool, not 1
        ("opset", 17.0, "an integer"),
        ("provider", 3, "a string"),
        ("measure", [1, 2], "mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    with pytest.raises(UserError) as e:
        load_profile(_write(tmp_path, {**_shipped_dict(), key: value}))
    assert f"'{key}'" in str(e.value) and expected in str(e.value)


def test_int_accepted_where_float_expected(tmp_path):
    data = _shipped_dict()
    data["measure"]["max_seconds"] = 2
    assert load_profile(_write(tmp_path, data)).measure.max_seconds == 2.0


def test_missing_key_is_named(tmp_path):
    data = _shipped_dict()
    del data["measure"]["cv_threshold"]
    with pytest.raises(UserError, match=r"lacks the key 'measure\.cv_threshold'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("execution_mode", "async", "choose one of: sequential, parallel"),
        ("batch", 0, "below its minimum 1"),
        ("intra_op_threads", -1, "below its minimum 0"),
    ],
)
def test_out_of_range_values(tmp_path, key, value, match):
    with pytest.raises(UserError, match=match):
        load_profile(_write(tmp_path, {**_shipped_dict(), key: value}))


def test_max_runs_below_min_runs(tmp_path):
    data = _shipped_dict()
    data["measure"]["max_runs"] = 5
    with pytest.raises(UserError, match="max_runs"):
        load_profile(_write(tmp_path, data))


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "name: x\nbackend: [onnxruntime\nprovider: CPU\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_profile(path)


def test_non_mapping_yaml(tmp_path):
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_profile(_write(tmp_path, "- just\n- a list\n"))


# --- device targets: agent URL, TensorRT section, cross-key rules ---------------------------------


def _jetson_dict() -> dict:
    data = load_profile("jetson-orin").to_dict()
    del data["source"]
    return data


def test_shipped_device_targets_load():
    orin, nano, int8, arm = (load_profile(n) for n in ("jetson-orin", "jetson-orin-nano", "jetson-orin-int8", "arm-cpu"))
    assert (orin.backend, orin.precision, orin.channel_step, orin.provider) == ("tensorrt", "fp16", 8, "GPU")
    assert (nano.precision, nano.channel_step, nano.tensorrt.workspace_mb) == ("fp16", 8, 1024)
    assert (int8.precision, int8.channel_step) == ("int8", 16)
    assert isinstance(orin.tensorrt, TensorRTSpec) and orin.agent == "http://127.0.0.1:8765"
    assert (arm.backend, arm.intra_op_threads, arm.tensorrt) == ("onnxruntime", 4, None)


def test_new_fields_roundtrip_through_dict_and_untrusted():
    p = dataclasses.replace(load_profile("jetson-orin"), agent="http://10.0.0.5:8765")
    assert Profile.from_dict(p.to_dict()) == p
    assert profile_from_untrusted(p.to_dict(), "req") == dataclasses.replace(p, source="req")
    old = load_profile("x86-cpu").to_dict()
    for key in ("agent", "tensorrt"):
        del old[key]  # a dict from before these keys existed still loads
    assert Profile.from_dict(old) == load_profile("x86-cpu")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"agent": None}, "backend tensorrt needs 'agent: http://HOST:PORT'"),
        ({"tensorrt": None}, "needs a 'tensorrt' section"),
        ({"agent": "jetson:8765"}, "write it as http://HOST:PORT"),
        ({"agent": "http://jetson"}, "write it as http://HOST:PORT"),
        ({"agent": "ftp://jetson:21"}, "write it as http://HOST:PORT"),
        ({"agent": 8765}, "'agent' must be a string"),
        ({"provider": "CUDAExecutionProvider"}, "runs on one of: GPU, DLA0, DLA1"),
        ({"precision": "bf16"}, "choose one of: fp32, fp16, int8"),
        ({"backend": "tflite"}, "choose one of: onnxruntime, tensorrt"),
        ({"tensorrt": {"workspace_mb": 1024}}, r"lacks the key 'tensorrt\.warmup_ms'"),
        ({"tensorrt": {"workspace_mb": "big", "warmup_ms": 1}}, r"'tensorrt\.workspace_mb' must be an integer"),
        ({"tensorrt": {"workspace_mb": 0, "warmup_ms": 1}}, "below its minimum 1"),
        ({"tensorrt": {"workspace_mb": 1, "warmup_ms": 1, "fp16": True}}, r"unknown key 'tensorrt\.fp16'"),
    ],
)
def test_tensorrt_profile_errors(tmp_path, change, match):
    with pytest.raises(UserError, match=match):
        load_profile(_write(tmp_path, {**_jetson_dict(), **change}))


def test_ort_profile_cannot_take_tensorrt_section_or_fp16(tmp_path):
    with pytest.raises(UserError, match="only applies to backend tensorrt"):
        load_profile(_write(tmp_path, {**_shipped_dict(), "tensorrt": {"workspace_mb": 1, "warmup_ms": 1}}))
    with pytest.raises(UserError, match="set precision: fp32"):
        load_profile(_write(tmp_path, {**_shipped_dict(), "precision": "fp16"}))
    ok = load_profile(_write(tmp_path, {**_shipped_dict(), "agent": "http://10.0.0.5:8765"}))
    assert ok.agent == "http://10.0.0.5:8765"


def test_untrusted_profile_is_validated_like_a_file():
    with pytest.raises(UserError, match="unknown key 'threads'"):
        profile_from_untrusted({**_shipped_dict(), "threads": 2}, "the request")
    with pytest.raises(UserError, match="top level must be a mapping"):
        profile_from_untrusted([1, 2], "the request")


@pytest.mark.parametrize(
    "measure, match",
    [
        ({"max_seconds": float("nan")}, "not a finite number"),
        ({"max_seconds": float("inf")}, "not a finite number"),
        ({"max_seconds": 1e9}, "above its maximum 300"),
        ({"cv_threshold": float("nan")}, "not a finite number"),
        ({"min_runs": 10**5000, "max_runs": 10**5000}, "thousands of digits, above its maximum"),
        ({"repeats_if_noisy": 1000}, "above its maximum 20"),
    ],
)
def test_untrusted_measurement_settings_are_bounded_and_finite(measure, match):
    data = _shipped_dict()
    data["measure"] = {**data["measure"], **measure}
    with pytest.raises(UserError, match=match):
        profile_from_untrusted(data, "the request")


def test_threads_and_strings_are_bounded():
    with pytest.raises(UserError, match="'intra_op_threads' is 100000, above its maximum 1024"):
        profile_from_untrusted({**_shipped_dict(), "intra_op_threads": 100000}, "the request")
    with pytest.raises(UserError, match="'name' is longer than 200 characters"):
        profile_from_untrusted({**_shipped_dict(), "name": "x" * 5000}, "the request")


def test_a_profile_cannot_name_a_token_source(tmp_path):
    for key in ("agent_token_file", "agent_token"):
        with pytest.raises(UserError, match=f"'{key}' is not read from a profile"):
            load_profile(_write(tmp_path, {**_shipped_dict(), "agent": "http://10.0.0.5:8765", key: "/etc/hostname"}))


def test_a_yaml_number_with_thousands_of_digits_is_a_user_error(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\nbatch: " + "9" * 5000 + "\n")
    with pytest.raises(UserError, match="thousands of digits"):
        load_profile(str(path))
