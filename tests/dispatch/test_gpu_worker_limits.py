"""A thread-pool (GPU) worker enforces the time limits: a model that hangs in native code
fails its job with the reason past the hard limit, the process exits to be replaced, and the
next job runs in the fresh one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from dicom_io.synthetic_study import radiograph
from pacsai_process import REPO, wait_until
from peers import RedisServer, StoreSCP, WorkerProcess, send_datasets
from test_queue_redis import (  # type: ignore[import-not-found]  # noqa: F401 - fixtures
    ANOMALY, db_of, jobs_of, listener, redis, scp)
from worker.watchdog import EXIT_HARD_LIMIT

SIZE = 64
SOFT, HARD = 1.0, 2.5
MANIFEST = {
    "name": "site-hang", "version": "1", "task": "anomaly", "modalities": ["CR"],
    "intended_use": "test: an engine call that never returns",
    "input": {"height": SIZE, "width": SIZE, "channels": 1},
    "labels": [{"name": "abnormal", "display": "Abnormal", "threshold": 0.5,
                "code": {"value": "263654008", "scheme": "SCT", "meaning": "Abnormal"}}],
    "files": {"onnx": "model.onnx"}, "training": {"data": "none"},
}


def hanging_model(folder: Path) -> Path:
    """A site model (ONNX + manifest) whose graph runs a Loop of 2**62 trips: ONNX Runtime
    spins in native code with the GIL released, as a hung GPU kernel or driver call would.
    The loop starts from the input's sum, so nothing can be folded when the session loads."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["one"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [], [1.0])),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])])
    image = ["B", 1, SIZE, SIZE]
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
         helper.make_node("Loop", ["trips", "true", "sum"], ["acc"], body=body),
         helper.make_node("Mul", ["acc", "zero"], ["nothing"]),
         helper.make_node("Add", ["x", "nothing"], ["reconstruction"]),
         helper.make_node("Sub", ["x", "reconstruction"], ["anomaly_map"]),
         helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0)],
        "hang",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, image)],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, image),
         helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, image),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [2 ** 62]),
         helper.make_tensor("true", TensorProto.BOOL, [], [True]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    site = folder / "site-hang"
    site.mkdir(parents=True)
    onnx.save(model, str(site / "model.onnx"))
    (site / "manifest.json").write_text(json.dumps(MANIFEST))
    return folder


def gpu_worker(proc, name: str) -> WorkerProcess:  # type: ignore[no-untyped-def]
    """``pacsai worker --gpu 0``: the thread pool on gpu.0, as on a GPU node."""
    w = WorkerProcess(proc, name)
    w.cmd = [sys.executable, "-m", "daemon.cli", "worker", "--gpu", "0", "--concurrency", "2"]
    return w


def launch(w: WorkerProcess) -> WorkerProcess:
    """Start ``w`` without waiting for it to be ready (WorkerProcess.start waits)."""
    w.proc = subprocess.Popen(w.cmd, cwd=REPO, env=w.env, stdout=w.log_path.open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    return w


def test_a_hung_model_fails_its_job_and_the_gpu_worker_is_replaced(
        tmp_path: Path, redis: RedisServer, scp: StoreSCP) -> None:
    models = hanging_model(tmp_path / "site-models")
    pipelines = [{"name": "hang", "model": "site-hang", "outputs": ["sr"]},
                 {**ANOMALY, "modalities": ["DX"]}]
    with listener(tmp_path, redis, scp, pipelines=pipelines,
                  PACSAI_QUEUES__INFERENCE='["gpu.0"]',
                  PACSAI_INFERENCE__MODELS_DIRS=json.dumps([str(models)]),
                  PACSAI_WORKER__TASK_SOFT_TIME_LIMIT=str(SOFT),
                  PACSAI_WORKER__TASK_TIME_LIMIT=str(HARD)) as proc:
        w1 = gpu_worker(proc, "gpu-1").start()
        w2 = None
        try:
            assert "(thread)" in w1.log()  # the pool that enforces no limit by itself
            send_datasets(proc.port, [radiograph(size=128, seed=41, modality="CR")])
            db = db_of(proc)
            wait_until(lambda: any(j.pipeline == "hang" and j.state == "running"
                                   for j in jobs_of(db)), 30, 0.05)
            # the replacement boots meanwhile (as systemd or pacsai serve would start it once
            # w1 exits; started now only to keep this test short): it may take only later jobs
            w2 = launch(gpu_worker(proc, "gpu-2"))
            assert w1.proc is not None
            assert w1.proc.wait(30) == EXIT_HARD_LIMIT, w1.log()[-3000:]
            jobs = {j.pipeline: j for j in jobs_of(db)}
            assert jobs["hang"].state == "failed" and jobs["hang"].queue == "gpu.0"
            assert jobs["hang"].error == (f"hard time limit ({HARD:g} s) exceeded: the model did "
                                          "not return; the worker process was replaced")
            assert f"soft time limit ({SOFT:g} s) exceeded; interrupting it" in w1.log()
            assert jobs["anomaly"].state == "done"  # nothing DX in it: recorded, not failed

            wait_until(lambda: "ready." in w2.log(), 60, 0.1)
            send_datasets(proc.port, [radiograph(size=128, seed=42, modality="DX")])
            wait_until(lambda: len(jobs_of(db)) == 4
                       and all(j.state in ("done", "failed") for j in jobs_of(db)), 60, 0.2)
            later = jobs_of(db)[2:]
            assert [(j.pipeline, j.state) for j in later] == [("hang", "done"), ("anomaly", "done")]
            # analysed and its SR written (delivery is the cpu queue's: no cpu worker here)
            assert len(list((proc.data_dir / "results").rglob("*.dcm"))) == 1
            assert w2.proc is not None and w2.proc.poll() is None
        finally:
            w1.kill9()
            if w2 is not None:
                w2.stop()
