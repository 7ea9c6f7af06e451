"""The deployment files parse and say what they must: prefect.yaml (deployments, pools, schedule, triggers, GPU
command), deploy/automations.yaml, the Ray cluster config (validated as `ray up` does), the KubeRay manifest and the
Dockerfile; and deploy/gpu_slot.py fails a run with the reason when the `gpu` limit is missing."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = {"build-dataset", "train-prior", "generate", "evaluate", "validate-dataset", "retrain-on-new-dataset",
               "retrain-nightly", "finetune-decoder"}
RETRAIN = ("retrain-on-new-dataset", "retrain-nightly")


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _by_name(spec):
    return {d["name"]: d for d in spec["deployments"]}


def test_prefect_yaml_declares_the_deployments(spec):
    deployments = _by_name(spec)
    assert set(deployments) == DEPLOYMENTS
    assert {d["entrypoint"] for d in deployments.values()} == {
        "flows.build_dataset:build_dataset", "flows.train_prior:train_prior", "flows.generate:generate",
        "flows.evaluate:evaluate", "flows.validate_dataset:validate_dataset", "flows.retrain:retrain",
        "flows.finetune_decoder:finetune_decoder"}
    pools = {name: d["work_pool"]["name"] for name, d in deployments.items()}
    assert pools == {"build-dataset": "lambda-gpu", "train-prior": "lambda-gpu", "generate": "lambda-gpu",
                     "evaluate": "lambda-gpu", "validate-dataset": "lambda-cpu", "retrain-on-new-dataset": "lambda-gpu",
                     "retrain-nightly": "lambda-gpu", "finetune-decoder": "lambda-gpu"}
    for name, d in deployments.items():
        job = d["work_pool"]["job_variables"]
        assert job["working_dir"] == "{{ $LAMBDA_ECLIPSE_ROOT }}"
        assert job["env"]["LAMBDA_ECLIPSE_RUNS"] == "{{ $LAMBDA_ECLIPSE_RUNS }}"  # where the prior registry is
        if name in RETRAIN:  # the flow takes the slots itself, around training and evaluation only
            assert "command" not in job and job["env"]["LAMBDA_ECLIPSE_GPU_SLOTS"] == "1"
            assert d["work_pool"]["work_queue_name"] == "retrain"
        elif pools[name] == "lambda-gpu":  # every other GPU run goes through the global concurrency limit
            assert job["command"] == "python deploy/gpu_slot.py" and job["env"]["LAMBDA_ECLIPSE_GPU_SLOTS"] == "1"
        else:
            assert "command" not in job
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory":
                             {"directory": "{{ $LAMBDA_ECLIPSE_ROOT }}"}}]


LOAD = """
import inspect, json, sys
from prefect.flows import load_flow_from_entrypoint
flow = load_flow_from_entrypoint(sys.argv[1], use_placeholder_flow=False)
parameters = inspect.signature(flow.fn).parameters
print(json.dumps({"name": flow.name, "accepted": list(parameters),
                  "required": [p for p, v in parameters.items() if v.default is inspect.Parameter.empty]}))
"""


def test_deployment_parameters_are_parameters_of_their_flows(spec):
    """Each entrypoint loads as a worker's flow-run process loads it (a fresh process, no placeholder flow: a flow
    file that imports a sibling's name, like flows/generate.py for `generate`, fails there), and a default for a
    parameter the flow does not take would fail every run."""
    entrypoints = sorted({d["entrypoint"] for d in spec["deployments"]})
    assert all(".py" not in e for e in entrypoints), "module entrypoints: a file's folder would shadow the packages"
    loads = {e: subprocess.Popen([sys.executable, "-c", LOAD, e], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for e in entrypoints}
    flows = {}
    for entrypoint, proc in loads.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{entrypoint}: {err[-2000:]}"
        flows[entrypoint] = json.loads(out.strip().splitlines()[-1])
    for d in spec["deployments"]:
        flow = flows[d["entrypoint"]]
        expected = "retrain" if d["name"] in RETRAIN else d["name"]  # the loop's two deployments share one flow
        assert flow["name"] == expected, f"{d['entrypoint']} is flow {flow['name']!r}, deployment {d['name']!r}"
        accepted = set(flow["accepted"])
        assert set(d.get("parameters") or {}) <= accepted, f"{d['name']}: {set(d['parameters']) - accepted}"
        if d["name"] in ("build-dataset", "train-prior", "validate-dataset", *RETRAIN):
            assert set(flow["required"]) <= set(d["parameters"]), (
                f"{d['name']} runs on a schedule or trigger: defaults for {flow['required']}")
        for trigger in d.get("triggers") or []:
            assert set(trigger.get("parameters") or {}) <= accepted


def test_retraining_schedule_and_trigger(spec):
    """A completed build triggers the loop on its dataset; the nightly run continues the current prior; train-prior and
    validate-dataset run on demand only (the loop runs them)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger, DeploymentTriggerTypes
    from pydantic import TypeAdapter

    deployments = _by_name(spec)
    for name in ("train-prior", "validate-dataset"):
        assert not deployments[name].get("triggers") and not deployments[name].get("schedules"), name
    on_build, nightly = (deployments[n] for n in RETRAIN)
    (trigger,) = on_build["triggers"]
    parsed = TypeAdapter(DeploymentTriggerTypes).validate_python(trigger)
    assert isinstance(parsed, DeploymentEventTrigger)
    assert parsed.expect == {"prefect.flow-run.Completed"}
    assert {(r["prefect.resource.role"], r["prefect.resource.name"]) for r in trigger["match_related"]} == {
        ("flow", "build-dataset"), ("deployment", "build-dataset")}
    assert trigger["parameters"] == {"data": "{{ flow_run.parameters.output }}"}
    assert on_build["parameters"]["check_dataset"] is True and on_build["parameters"]["continue_current"] is False
    assert on_build["parameters"]["profile"] is None  # follows the dataset's
    assert not on_build.get("schedules") and not nightly.get("triggers")
    assert nightly["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    assert nightly["parameters"] == on_build["parameters"] | {
        "data": None, "continue_current": True, "check_dataset": False, "overrides": ["train.steps_per_run=10000"]}
    for name in ("generate", "evaluate"):  # null: the registry's current prior
        assert deployments[name]["parameters"]["prior"] is None


def test_trigger_templates_render_like_the_server(spec):
    """The trigger's parameters rendered as Prefect's RunDeployment action does."""
    from prefect.server.events.actions import RunDeployment
    from prefect.server.utilities.user_templates import render_user_template_sync

    (trigger,) = _by_name(spec)["retrain-on-new-dataset"]["triggers"]
    params = dict(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(params)
    context = {"flow_run": {"name": "happy-otter", "parameters": {"output": "s3://b/ds", "profile": "tiny"}}}
    rendered = {}
    for key, value in params.items():
        if isinstance(value, dict) and value.get("__prefect_kind") == "json":
            rendered[key] = yaml.safe_load(render_user_template_sync(value["value"]["template"], context))
        else:
            rendered[key] = render_user_template_sync(value["template"], context)
    assert rendered == {"data": "s3://b/ds"}


def test_automations_file_is_valid():
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    data = yaml.safe_load((ROOT / "deploy" / "automations.yaml").read_text())
    (automation,) = [AutomationCore.model_validate(a) for a in data["automations"]]
    assert isinstance(automation.trigger, EventTrigger)
    assert automation.trigger.posture == "Proactive" and automation.actions[0].type == "change-flow-run-state"


def test_ray_cluster_config_validates_as_ray_up_does():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "deploy" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"] and any("/models" in o for o in config["docker"]["run_options"])
    assert any("--head" in c for c in config["head_start_ray_commands"])
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token reaches every node
    head, worker = starts
    assert {"--include-dashboard=true", "--dashboard-port=8265", "--metrics-export-port=8080"} <= set(head.split())
    assert "--metrics-export-port=8080" in worker.split()  # every node serves Prometheus metrics


def test_kuberay_manifest():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay-raycluster.yaml").read_text()))
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    containers = {c["name"]: c for c in head["containers"]}
    worker = containers["prefect-worker"]
    assert {"name": "RAY_ADDRESS", "value": "auto"} in worker["env"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "lambda-gpu"]
    for c in containers.values():  # the worker finds the head through the shared /tmp/ray
        assert {"name": "ray-tmp", "mountPath": "/tmp/ray"} in c["volumeMounts"]
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    token = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray-auth", "key": "token"}}}
    for c in [*containers.values(), *gpu["template"]["spec"]["containers"]]:  # every Ray process and client
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in c["env"] and token in c["env"]
    head_params = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert head_params["include-dashboard"] == "true" and head_params["metrics-export-port"] == "8080"
    assert gpu["rayStartParams"]["metrics-export-port"] == "8080"
    assert {"containerPort": 8080, "name": "metrics"} in containers["ray-head"]["ports"]
    assert {e["name"] for e in containers["ray-head"]["env"]} >= {"RAY_PROMETHEUS_HOST", "RAY_GRAFANA_HOST"}
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and gpu["rayStartParams"]["num-gpus"] == "1"
    assert [d["kind"] for d in docs] == ["RayCluster", "PersistentVolumeClaim"]


def test_dockerfile():
    lines, current = [], ""
    for raw in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    known = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD"}
    assert all(line.split()[0] in known for line in lines), [line.split()[0] for line in lines]
    text = "\n".join(lines)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+$", text, re.M) and "FROM ${CUDA_IMAGE}" in text
    assert "HF_HOME=/models/huggingface" in text and 'VOLUME ["/models"]' in text and "HF_HUB_OFFLINE=1" in text
    assert "pip install -e ." in text and "LAMBDA_ECLIPSE_ROOT=/opt/lambda-eclipse" in text
    assert lines[-1] == 'CMD ["prefect", "worker", "start", "--pool", "lambda-gpu"]'


def test_gpu_slot_fails_the_run_with_the_reason_when_the_limit_is_missing(prefect_harness, monkeypatch):
    from prefect import flow, get_client
    from prefect.states import Pending

    @flow(name="gpu-slot-probe")
    def probe():
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(probe, state=Pending())
    module_spec = importlib.util.spec_from_file_location("gpu_slot", ROOT / "deploy" / "gpu_slot.py")
    assert module_spec is not None and module_spec.loader is not None
    gpu_slot = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(gpu_slot)
    monkeypatch.setitem(os.environ, "PREFECT__FLOW_RUN_ID", str(run.id))
    monkeypatch.setitem(os.environ, "LAMBDA_ECLIPSE_GPU_LIMIT", "gpu-missing-in-this-test")
    assert gpu_slot.main() == 1
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.is_failed() and state.message is not None
    assert state.message.startswith("the global concurrency limit 'gpu-missing-in-this-test' does not exist: "
                                    "create it with `prefect gcl create gpu-missing-in-this-test --limit N`")
