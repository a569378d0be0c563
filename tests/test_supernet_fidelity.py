"""A search that scores with a supernet prints the fidelity measured for that very checkpoint, or that none was."""

from __future__ import annotations

from conftest import TINY_SPACE as TINY


def test_a_search_scoring_with_the_supernet_prints_its_measured_fidelity(tmp_path, tiny_space, capsys):
    import yaml

    from evaluators.supernet import Supernet, SupernetConfig, record_fidelity, save_checkpoint
    from nas.experiment import experiment_from_dict
    from nas.objective import prepare

    ckpt = save_checkpoint(tmp_path / "s.pt", Supernet(tiny_space), SupernetConfig(), epoch=1, data="digits")
    exp = experiment_from_dict({"name": "fid", "space": yaml.safe_load(TINY), "data": "digits",
                                "search": {"trials": 2}, "output": str(tmp_path / "run"),
                                "accuracy": {"method": "supernet", "checkpoint": str(ckpt)}}, base_dir=tmp_path)
    prepare(exp, progress=False)
    assert "supernet fidelity: none measured" in capsys.readouterr().err
    record_fidelity(ckpt, {"bn_images": 1280, "n": 20, "kendall_tau": 0.55, "kendall_p": 0.0007,
                           "spearman_rho": 0.71, "spearman_p": 0.0004, "top5_overlap": "4/5"})
    prepare(exp, progress=False)
    assert "Kendall tau 0.55 (p 0.0007), Spearman rho 0.71, top-5 overlap 4/5" in capsys.readouterr().err

