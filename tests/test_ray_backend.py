"""What only the Ray Tune backend does, against a real local Ray (no mocks): ASHA on proxy training
with a LUT, the searcher over an Optuna study, and the Ray internals nas/ray_adapter.py relies on.

What both backends must do alike (seeds, score reuse, breaker, kill + resume, ...) is in test_backends.py.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from nas.run_folder import RunFolder
from test_search_common import front_from_csv, records, tiny_experiment


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    """A real lookup table of the tiny space, measured once with a short protocol."""
    from evaluators.latency import LatencyLUT, LatencyTarget, MeasurementProtocol
    from search_space import SearchSpace
    from conftest import TINY_SPACE
    from test_search_common import QUICK_PROTOCOL

    path = tmp_path_factory.mktemp("lut") / "lut.json"
    LatencyLUT.build(SearchSpace.from_yaml(TINY_SPACE), LatencyTarget(), MeasurementProtocol(**QUICK_PROTOCOL),
                     progress=False, path=path, calibration=3)
    return path


def ray_experiment(tmp, lut_path, **kw):
    import yaml

    p = tiny_experiment(tmp, backend="ray", **kw)
    d = yaml.safe_load(p.read_text())
    d["latency"].update(mode="lut", lut=str(lut_path))
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_asha_prunes_weak_trainings_and_the_lut_front_is_remeasured(tmp_path, lut_path, cli):
    # 2 trials at a time, each 2 epochs of proxy training on 300 digits images; ASHA stops weak ones
    exp = ray_experiment(tmp_path, lut_path, name="asha", trials=10, budget_ms=1.0, concurrency=2,
                         ray={"scheduler": "asha", "num_cpus": 2},
                         accuracy={"method": "proxy_training", "subset": 300,
                                   "train": {"epochs": 2, "batch_size": 64, "threads": 1}})
    r = cli("search", exp, "--json", "--no-onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "run"
    sampled = records(run_dir)
    assert sorted(x["number"] for x in sampled) == list(range(10))
    complete = [x for x in sampled if x["state"] == "COMPLETE"]
    assert complete and all(x["latency_source"] == "lut" for x in complete)
    assert all(x["feasible"] == (x["latency_ms"] <= 1.0) for x in complete)
    pruned = [x for x in sampled if x["state"] == "PRUNED"]
    assert pruned and all(x["stopped_early"] for x in pruned), \
        [(x["state"], x["epochs"]) for x in sampled]
    assert all(x["state"] == "COMPLETE" and x["epochs"] == 2 for x in sampled if x not in pruned)
    summary = json.loads(r.stdout)
    front = json.loads(RunFolder(run_dir).front_json.read_text())
    assert {m["arch_key"] for m in front["members"]} == front_from_csv(RunFolder(run_dir).trials_csv)
    assert summary["front_size"] == len(front["members"]) > 0
    assert all(m["latency_measured_ms"] > 0 for m in front["members"])  # LUT front re-measured
    assert not {x["arch_key"] for x in pruned} & {m["arch_key"] for m in front["members"]}
    import yaml

    for m in front["members"]:  # the export's per-block breakdown carries the LUT's latency per block
        cand = yaml.safe_load((RunFolder(run_dir).pareto / m["folder"] / "candidate.yaml").read_text())
        assert all(b["lut_ms"] is not None and b["lut_ms"] > 0 for b in cand["blocks"])


def test_searcher_queues_seeds_tells_every_state_and_reuses_scores(tmp_path):
    """The Tune searcher over an Optuna study, driven as Tune drives it (suggest, complete, save, restore)."""
    from optuna.trial import TrialState

    from conftest import TINY_SPACE
    from nas.backends.ray import COPY_KEY, NUMBER_KEY, PARAMS_KEY, SEED_KEY, StudySearcher
    from nas.experiment import load_experiment
    from nas.objective import new_record
    from search_space import SearchSpace

    space = SearchSpace.from_yaml(TINY_SPACE)
    exp = load_experiment(tiny_experiment(tmp_path, backend="ray", budget_ms=2.0))
    a = space.sample(seed=1)
    s = StudySearcher(exp, space, [("a", space.params_of(a)), ("a_again", space.params_of(a))])
    cfgs = [s.suggest(f"t{i}") for i in range(5)]
    assert [c[NUMBER_KEY] for c in cfgs] == [0, 1, 2, 3, 4]
    assert [c[SEED_KEY] for c in cfgs[:2]] == ["a", "a_again"] and cfgs[2][SEED_KEY] is None
    assert space.decode(cfgs[0][PARAMS_KEY]) == a and COPY_KEY not in cfgs[1]  # nothing scored yet

    def final(cfg, state="COMPLETE", acc=0.9, ms=3.0):
        rec = new_record(space.decode(cfg[PARAMS_KEY]), cfg[NUMBER_KEY])
        rec.state, rec.accuracy, rec.latency_ms, rec.constraint = state, acc, ms, ms - 2.0
        rec.feasible = rec.constraint <= 0
        return {"final": True, "state": state, "record": json.dumps(rec.to_dict())}

    s.on_trial_complete("t0", final(cfgs[0]))  # over the budget
    s.on_trial_complete("t1", {"accuracy_epoch": 0.5, "epoch": 1, "final": False})  # stopped by ASHA
    s.on_trial_complete("t2", final(cfgs[2], state="FAIL"))
    s.on_trial_complete("t3", None, error=True)
    s.on_trial_complete("t4", final(cfgs[4], acc=0.8, ms=1.0))
    trials = s.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[0].constraints == {"latency_ms": 1.0} and trials[0].values == [0.9, 3.0]
    assert [t.number for t in s.study.best_trials] == [4]  # the infeasible one never reaches the front

    path = tmp_path / "searcher.pkl"  # Tune saves the searcher after every step and restores it on resume
    s.save(str(path))
    restored = pickle.loads(pickle.dumps(StudySearcher(exp, space, [])))
    restored.restore(str(path))
    assert [t.state for t in restored.study.get_trials()] == [t.state for t in trials]
    restored.study.enqueue_trial(space.params_of(a))  # the sampler proposes a scored network again
    cfg = restored.suggest("t5")
    copy = json.loads(cfg[COPY_KEY])
    assert cfg[NUMBER_KEY] == 5 and (copy["copy_of"], copy["trial_id"], copy["accuracy"]) == (0, "t5", 0.9)


@pytest.mark.slow
def test_ray_internals_still_where_the_adapter_looks(tmp_path):
    """Each Ray internal nas/ray_adapter.py relies on, used for real: fails loudly when one moves."""
    ray = pytest.importorskip("ray")
    from ray import tune
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError

    from evaluators.ray_cluster import start_private_cluster
    from nas import ray_adapter

    # the wording the failure parser reads: the GCS's death cause of an actor, ActorDiedError's message
    gcs = Path(ray.__file__).parent / "core" / "src" / "ray" / "gcs" / "gcs_server"
    assert b"node has died. Node Id: " in gcs.read_bytes(), f"GCS wording moved (Ray {ray.__version__})"
    died = ActorDiedError(ActorDiedErrorContext(actor_id=bytes(range(16)), class_name="X",
                                                error_message="The actor died because its node has died. "
                                                              "Node Id: 0a1b2c"))
    assert ray_adapter.dead_node(str(died)) == "0a1b2c"
    twice = f"Failure # 1 (occurred at now)\n{died}\nFailure # 2 (occurred at now)\n{died}\n"  # one death, told twice
    assert ray_adapter.failures_in(twice) == 1
    assert ray_adapter.failures_in(twice.replace(bytes(range(16)).hex(), "ff" * 16, 1)) == 2

    before = dict(os.environ)
    with ray_adapter.tune_environment():
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "0"
    assert dict(os.environ) == before

    seen = {}

    class Probe(tune.Callback):
        def on_trial_error(self, iteration, trials, trial, **info):
            seen.update(exception=ray_adapter.trial_exception(trial), count=ray_adapter.failure_count(trial),
                        text=ray_adapter.error_text(trial), failure=ray_adapter.trial_failure(trial),
                        staging=ray_adapter.staging_dir(trial))

    def fails(config):
        raise RuntimeError("probe failure")

    start_private_cluster(num_cpus=1)
    try:
        @ray.remote(num_cpus=0)
        class Placed:
            def where(self):
                return ray.get_runtime_context().get_actor_id(), ray.get_runtime_context().get_node_id()

        actor = Placed.remote()
        actor_id, node = ray.get(actor.where.remote())
        assert ray_adapter.actor_node(actor_id) == node
        assert ray_adapter.node_left(node, wait_s=0) is False

        with ray_adapter.tune_environment():
            tune.Tuner(fails, run_config=tune.RunConfig(name="probe", storage_path=str(tmp_path), verbose=0,
                                                        callbacks=[Probe()])).fit()
            assert seen, "Tune did not call on_trial_error"
            assert getattr(seen["exception"], "cause", None).args == ("probe failure",)
            assert seen["count"] == 1 and "Failure # 1 " in seen["text"]
            assert seen["failure"] == ("RuntimeError: probe failure", "")
            assert Path(seen["staging"]).is_dir()
            restored = tune.Tuner.restore(str(tmp_path / "probe"), trainable=fails)
            assert [type(c).__name__ for c in ray_adapter.restored_callbacks(restored)] == ["Probe"]
    finally:
        ray.shutdown()
