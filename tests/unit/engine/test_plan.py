"""engine/plan.py: every declaration shape (one engine per GPU, two TP=4, TP=8, mixed models,
pipeline parallel, explicit ids and ports, a CPU host) laid out to devices, ports, shm, the
`vllama engine` command, the façade's engine list and Prometheus targets; and every
declaration that cannot be laid out refused with a message that says what to change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vllama.config import HostPlan
from vllama.engine.plan import HostLayout, PlanError, gpu_ranges, plan_host

QWEN7 = "Qwen/Qwen2.5-7B-Instruct"
QWEN72 = "Qwen/Qwen2.5-72B-Instruct"


def lay(gpus: int | list[int], *engines: dict[str, Any], **host: Any) -> HostLayout:
    return plan_host(HostPlan.model_validate({"gpus": gpus, "engines": list(engines), **host}))


def gpus_of(layout: HostLayout) -> dict[str, tuple[int, ...]]:
    return {e.name: e.gpus for e in layout.engines}


def test_eight_gpus_one_engine_per_gpu() -> None:
    layout = lay(8, {"model": QWEN7, "served_name": "qwen2.5:7b", "replicas": "fill"})
    assert [e.name for e in layout.engines] == [f"qwen2-5-7b-{i}" for i in range(8)]
    assert [e.gpus for e in layout.engines] == [(i,) for i in range(8)]
    assert [e.port for e in layout.engines] == list(range(8001, 8009))
    assert {e.served_name for e in layout.engines} == {"qwen2.5:7b"}
    assert layout.unused_gpus == ()
    first = layout.engines[0]
    assert first.cuda_visible_devices == "0"
    assert first.env()["CUDA_VISIBLE_DEVICES"] == "0"
    # nvidia-smi's numbering, not CUDA's fastest-first default
    assert first.env()["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "--tensor-parallel-size" not in first.args
    assert first.shm_size == "4gb"


def test_two_tp4_engines() -> None:
    layout = lay(8, {"model": QWEN72, "name": "big", "tensor_parallel_size": 4, "replicas": 2})
    assert gpus_of(layout) == {"big-0": (0, 1, 2, 3), "big-1": (4, 5, 6, 7)}
    e = layout.engines[1]
    assert e.cuda_visible_devices == "4,5,6,7"
    assert e.args == ("--tensor-parallel-size", "4")
    assert e.shm_size == "16gb"
    assert [x.port for x in layout.engines] == [8001, 8002]


def test_one_tp8_engine_keeps_its_plain_name() -> None:
    layout = lay(8, {"model": QWEN72, "tensor_parallel_size": 8})
    (e,) = layout.engines
    assert e.name == "qwen2-5-72b-instruct"  # one replica: no index
    assert e.gpus == tuple(range(8)) and e.served_name == QWEN72


def test_mixed_models_widest_engines_take_aligned_ids_whatever_the_order() -> None:
    layout = lay(
        8,
        {"model": QWEN7, "served_name": "small", "replicas": 2},
        {"model": QWEN72, "served_name": "big", "tensor_parallel_size": 4},
        {"model": "BAAI/bge-m3", "served_name": "embed", "replicas": "fill"},
    )
    assert gpus_of(layout) == {
        "small-0": (4,),
        "small-1": (5,),
        "big": (0, 1, 2, 3),
        "embed-0": (6,),
        "embed-1": (7,),
    }
    # Ports follow the declaration order, not the GPU order.
    assert [(e.name, e.port) for e in layout.engines] == [
        ("small-0", 8001),
        ("small-1", 8002),
        ("big", 8003),
        ("embed-0", 8004),
        ("embed-1", 8005),
    ]


def test_pipeline_parallel_spans_tp_times_pp_gpus() -> None:
    layout = lay(
        8, {"model": QWEN72, "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "replicas": 2}
    )
    assert [e.gpus for e in layout.engines] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert layout.engines[0].args == (
        "--tensor-parallel-size",
        "2",
        "--pipeline-parallel-size",
        "2",
    )


def test_declared_ids_and_explicit_gpus_and_ports() -> None:
    layout = lay(
        [2, 3, 4, 5],
        {"model": QWEN7, "name": "pinned", "gpus": [5], "port": 9000},
        {"model": QWEN72, "name": "rest", "replicas": "fill"},
        base_port=7000,
    )
    assert gpus_of(layout) == {"pinned": (5,), "rest-0": (2,), "rest-1": (3,), "rest-2": (4,)}
    assert [e.port for e in layout.engines] == [9000, 7000, 7001, 7002]


def test_unused_gpus_are_reported() -> None:
    layout = lay(8, {"model": QWEN72, "tensor_parallel_size": 3, "replicas": 2})
    assert layout.unused_gpus == (6, 7)
    assert layout.owner(6) is None and layout.owner(4) is layout.engines[1]


def test_auto_ports_skip_explicit_ports_and_the_facade_port() -> None:
    plan = HostPlan.model_validate(
        {
            "gpus": 4,
            "base_port": 8001,
            "engines": [
                {"model": QWEN7, "name": "a", "replicas": 3},
                {"model": QWEN72, "name": "b", "port": 8002},
            ],
        }
    )
    layout = plan_host(plan, facade_port=8003)
    assert {e.name: e.port for e in layout.engines} == {
        "a-0": 8001,
        "a-1": 8004,
        "a-2": 8005,
        "b": 8002,
    }


def test_cpu_host_engines_own_no_gpu() -> None:
    layout = lay(
        0, {"model": "/opt/models/vllama-demo", "served_name": "vllama-demo", "replicas": 2}
    )
    assert [e.gpus for e in layout.engines] == [(), ()]
    assert "CUDA_VISIBLE_DEVICES" not in layout.engines[0].env()
    assert layout.engines[0].shm_size == "1gb"
    assert layout.gpus == ()


def test_command_env_and_facade_list_agree() -> None:
    layout = lay(
        2,
        {
            "model": QWEN7,
            "served_name": "qwen",
            "replicas": "fill",
            "args": "--max-model-len 8192 --override-generation-config '{\"temperature\": 0}'",
            "env": {"VLLM_ATTENTION_BACKEND": "FLASHINFER"},
            "capabilities": ["tools"],
        },
        engine_host="0.0.0.0",
    )
    e = layout.engines[1]
    assert e.command() == [
        "vllama",
        "engine",
        "--model",
        QWEN7,
        "--served-name",
        "qwen",
        "--host",
        "0.0.0.0",
        "--port",
        "8002",
        "--",
        "--max-model-len",
        "8192",
        "--override-generation-config",
        '{"temperature": 0}',
    ]
    env = e.env()
    assert json.loads(env["VLLAMA_ENGINE_ARGS"]) == list(e.args)  # a list, never word-split
    assert env["VLLAMA_ENGINE_PORT"] == "8002" and env["VLLAMA_ENGINE_NAME"] == "qwen"
    assert env["VLLM_ATTENTION_BACKEND"] == "FLASHINFER"
    # The façade on the host reaches a wildcard-bound engine through loopback.
    engines = layout.facade_engines()
    assert [c.url for c in engines] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert engines[0].models == ["qwen"] and engines[0].capabilities == ["tools"]


def test_prometheus_targets_use_the_hosts_address() -> None:
    layout = lay(2, {"model": QWEN7, "name": "q", "replicas": 2}, address="10.0.0.11")
    assert layout.prometheus_targets() == [
        {
            "targets": ["10.0.0.11:8001"],
            "labels": {"engine": "q-0", "model_name": QWEN7, "gpus": "0"},
        },
        {
            "targets": ["10.0.0.11:8002"],
            "labels": {"engine": "q-1", "model_name": QWEN7, "gpus": "1"},
        },
    ]
    data = layout.as_dict()
    assert data["unused_gpus"] == [] and len(data["engines"]) == 2
    assert data["facade_engines"][0] == {"url": "http://127.0.0.1:8001", "models": [QWEN7]}
    json.dumps(data)  # what --json prints


def test_same_declaration_same_layout() -> None:
    decl: dict[str, Any] = {"model": QWEN7, "replicas": "fill"}
    assert lay(4, decl).as_dict() == lay(4, decl).as_dict()


# --- refusals --------------------------------------------------------------------------


def refused(gpus: int | list[int], *engines: dict[str, Any], **host: Any) -> str:
    with pytest.raises(PlanError) as info:
        lay(gpus, *engines, **host)
    return str(info.value)


def test_more_gpus_asked_than_declared() -> None:
    msg = refused(
        8,
        {"model": QWEN72, "name": "big", "tensor_parallel_size": 4, "replicas": 2},
        {"model": QWEN7, "name": "small", "replicas": 2},
    )
    assert "ask for 10 GPUs" in msg and "big: 2 x 4" in msg and "declares 8 (0-7)" in msg
    assert "lower replicas" in msg


def test_one_engine_wider_than_the_host() -> None:
    msg = refused(4, {"model": QWEN72, "name": "big", "tensor_parallel_size": 8})
    assert "'big' (TP=8) needs 8 GPUs for one engine" in msg and "declares 4" in msg


def test_tp_not_dividing_the_gpus_left_for_fill() -> None:
    msg = refused(
        8, {"model": QWEN72, "name": "odd", "tensor_parallel_size": 3, "replicas": "fill"}
    )
    assert "3 GPUs per engine do not divide the 8 GPUs left" in msg
    assert "give replicas = 2 (6 GPUs)" in msg


def test_fill_with_nothing_left() -> None:
    msg = refused(
        4,
        {"model": QWEN72, "tensor_parallel_size": 4},
        {"model": QWEN7, "name": "rest", "replicas": "fill"},
    )
    assert "no GPU is left" in msg


def test_two_fill_lines() -> None:
    msg = refused(8, {"model": QWEN7, "replicas": "fill"}, {"model": QWEN72, "replicas": "fill"})
    assert "only one line may fill" in msg


def test_fill_on_a_cpu_host() -> None:
    assert "declares none; give replicas a number" in refused(
        0, {"model": QWEN7, "replicas": "fill"}
    )


def test_explicit_port_clash() -> None:
    msg = refused(
        3,
        {"model": QWEN7, "name": "a", "port": 8001, "replicas": 2},
        {"model": QWEN72, "name": "b", "port": 8002},
    )
    assert "port 8002 is given to both engine 'a-1' and engine 'b'" in msg


def test_engine_port_on_the_facade_port() -> None:
    plan = HostPlan.model_validate({"gpus": 1, "engines": [{"model": QWEN7, "port": 11434}]})
    with pytest.raises(PlanError, match="port 11434 is given to both the façade and engine"):
        plan_host(plan, facade_port=11434)


def test_ports_past_65535() -> None:
    assert "outside 1-65535" in refused(2, {"model": QWEN7, "replicas": 2, "port": 65535})


def test_explicit_gpus_undeclared_taken_or_wrong_count() -> None:
    assert "names GPU(s) 9 the host does not declare" in refused(8, {"model": QWEN7, "gpus": [9]})
    msg = refused(
        8,
        {"model": QWEN7, "name": "a", "gpus": [0, 1], "replicas": 2},
        {"model": QWEN72, "name": "b", "gpus": [1]},
    )
    assert "'b' (TP=1) names GPU(s) 1 another engine already has" in msg
    msg = refused(8, {"model": QWEN72, "name": "c", "tensor_parallel_size": 2, "gpus": [0, 1, 2]})
    assert "needs 2 GPUs but names 3 (0-2)" in msg


def test_parallel_flags_belong_in_the_declaration() -> None:
    msg = refused(8, {"model": QWEN72, "args": ["--tensor-parallel-size", "4"]})
    assert "give tensor_parallel_size in the declaration, not --tensor-parallel-size" in msg
    msg = refused(8, {"model": QWEN72, "args": ["-pp=2"]})
    assert "pipeline_parallel_size" in msg


def test_duplicate_names_and_one_name_for_two_models() -> None:
    msg = refused(2, {"model": QWEN7, "name": "x"}, {"model": QWEN72, "name": "x"})
    assert "lines 1 and 2 are both named 'x'" in msg
    msg = refused(
        2,
        {"model": QWEN7, "name": "a", "served_name": "qwen"},
        {"model": QWEN72, "name": "b", "served_name": "qwen"},
    )
    assert "both serve the name 'qwen' but load different models" in msg


def test_same_model_on_two_lines_is_allowed() -> None:
    layout = lay(
        2,
        {"model": QWEN7, "name": "a", "served_name": "q"},
        {"model": QWEN7, "name": "b", "served_name": "q", "args": ["--max-num-seqs", "8"]},
    )
    assert [c.models for c in layout.facade_engines()] == [["q"], ["q"]]


def test_bad_shm_size() -> None:
    assert "is not a size" in refused(1, {"model": QWEN7, "shm_size": "lots"})
    assert lay(1, {"model": QWEN7, "shm_size": "512m"}).engines[0].shm_size == "512m"


def test_gpu_ranges_text() -> None:
    assert gpu_ranges([0, 1, 2, 3]) == "0-3"
    assert gpu_ranges([4, 0, 1]) == "0-1,4"
    assert gpu_ranges([]) == "none"


def test_undeclared_capabilities_are_left_to_detection() -> None:
    """A plan line without `capabilities` must not pin the façade's view to "none": the
    pool probes such engines (tools, thinking, vision), as any engine it only fronts."""
    plain = lay(2, {"model": QWEN7, "name": "q"})
    assert plain.facade_engines()[0].capabilities is None
    declared = lay(2, {"model": QWEN7, "name": "q", "capabilities": ["tools"]})
    assert declared.facade_engines()[0].capabilities == ["tools"]
