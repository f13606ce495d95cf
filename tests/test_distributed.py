"""Training on two processes (gloo on the CPU), as torchrun runs it: the ranks stay identical,
every case is trained once per epoch across them, and the gathered validation is what one
process measures on the saved checkpoint."""

import os
import socket

import pandas as pd
import pytest
import torch

from napari_fairseg.cli import main
from napari_fairseg.inference.distributed import Distributed, launch_command

from .conftest import write_toy_cohort


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, out, cohort):
    """One torchrun process: the environment torchrun sets, then the trainer as the CLI runs it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from napari_fairseg.progress import run_job
    from napari_fairseg.training import TrainConfig, model_config_for, train_job

    mc = model_config_for(cohort, network="unet", features=(4, 8))
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", fairness="groupdro", dro_eta=1.0,
                      cache=os.path.join(out, "cache"))
    res = run_job(train_job(cohort, mc, cfg, out=os.path.join(out, "m.pt")))
    torch.save({"state": res.model.state_dict(), "fed": res.fed, "log": res.log.to_dict("list")},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_train_one_model_on_every_case_once(tmp_path):
    from napari_fairseg.inference import InferenceConfig, Predictor
    from napari_fairseg.models import load_checkpoint
    from napari_fairseg.training import validate
    from napari_fairseg.training.data import pipeline_of

    toy = write_toy_cohort(tmp_path / "toy", n_major=6, n_minor=2, val=(3, 2))
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp_path), toy), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # DDP: one model, bit for bit, on both ranks; GroupDRO's q (in the log) is the same too
    assert all(torch.equal(v, ranks[1]["state"][k]) for k, v in ranks[0]["state"].items())
    assert ranks[0]["log"].keys() == ranks[1]["log"].keys() and "q[minor]" in ranks[0]["log"]
    for k, v in ranks[0]["log"].items():
        if k != "seconds":
            assert v == ranks[1]["log"][k], k
    # every training case once per epoch, half on each rank (8 cases: no wrap-around padding)
    train = sorted(toy.cases.query("split == 'train'")["case_id"])
    for epoch in range(2):
        fed = [r["fed"][epoch] for r in ranks]
        assert len(fed[0]) == len(fed[1]) == 4 and sorted(fed[0] + fed[1]) == train
    # only rank 0 wrote: one checkpoint, one log, with rank 0's weights
    assert sorted(p.name for p in tmp_path.glob("m*")) == ["m.log.csv", "m.pt"]
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert all(torch.equal(v, ranks[0]["state"][k]) for k, v in ckpt.state_dict.items())
    assert ckpt.meta["world_size"] == 2
    # the validation each rank logged covers both ranks' cases: one process on the checkpoint agrees
    val_ids = toy.cases.query("split == 'val'")["case_id"].tolist()
    table = validate(Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu")), toy, val_ids,
                     pipeline=pipeline_of(ckpt), cache=tmp_path / "cache")
    log = pd.read_csv(tmp_path / "m.log.csv").iloc[-1]
    assert log["val_dice"] == pytest.approx(table["dice"].mean(), abs=1e-9)
    for g in ("major", "minor"):
        assert log[f"val_dice[{g}]"] == pytest.approx(table.loc[table["group"] == g, "dice"].mean(), abs=1e-9)


def test_each_rank_takes_an_equal_share_wrapping_around():
    items = list("abcde")
    shares = [Distributed(rank=r, world_size=2).share(items) for r in (0, 1)]
    assert shares == [["a", "c", "e"], ["b", "d", "a"]]  # 'a' twice: equal step counts on both ranks
    assert [Distributed(rank=r, world_size=2).shard(items) for r in (0, 1)] == [["a", "c", "e"], ["b", "d"]]
    assert Distributed().share(items) == items and Distributed().gather(3) == [3]


def test_train_nproc_relaunches_through_torchrun(tmp_path, capsys, monkeypatch):
    cmd = launch_command(2, ["--quiet", "train", "c.csv", "--nproc", "2", "--out", "m.pt", "--nproc=2"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m", "napari_fairseg.cli", "--quiet", "train", "c.csv", "--out", "m.pt"]
    toy = write_toy_cohort(tmp_path / "toy", n_major=2, n_minor=1, val=(1, 1))
    manifest = tmp_path / "toy.csv"
    toy.cases.to_csv(manifest, index=False)
    assert main(["train", str(manifest), "--out", str(tmp_path / "m.pt"), "--nproc", "0"]) == 2
    assert "--nproc must be 1 or more, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)  # already under torchrun: no second launch
    assert main(["train", str(manifest), "--out", str(tmp_path / "m.pt"), "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt"))


def _predict_rank(rank, world, ports, manifest, model, ids, out):
    """One torchrun process of `fairseg predict`, then the same job kept in memory to see its share
    (a second process group on a port of its own: rank 0's first store may still be closing)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    from napari_fairseg.data.readers import open_cohort
    from napari_fairseg.inference import InferenceConfig, predict_cases_job
    from napari_fairseg.inference.distributed import session
    from napari_fairseg.progress import run_job

    assert main(["--quiet", "predict", manifest, "--model", model, "--out", os.path.join(out, "dist"),
                 "--cases", ",".join(ids), "--device", "cpu"]) == 0
    os.environ["MASTER_PORT"] = str(ports[1])
    with session("cpu") as dist:
        res = run_job(predict_cases_job(open_cohort(manifest), model, ids, keep=True, dist=dist,
                                        settings=InferenceConfig(device="cpu")))
    torch.save({"kept": sorted(res.predictions), "scores": res.scores}, os.path.join(out, f"pred{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_share_the_cases_of_a_prediction(tmp_path, tiny_brain):
    """`fairseg predict` under torchrun: each case predicted by one rank, written once, and the
    gathered scores (rank 0 writes scores.csv) equal one process's, case for case."""
    import nibabel as nib
    import numpy as np

    from napari_fairseg.data.manifest import write_manifest

    manifest = str(write_manifest(tiny_brain, tmp_path / "manifest.csv"))
    model = str(tmp_path / "m.pt")
    assert main(["--quiet", "train", manifest, "--out", model, "--epochs", "1", "--device", "cpu",
                 "--patch", "16,16,16"]) == 0
    ids = tiny_brain.case_ids[:5][::-1]  # 5 cases over 2 ranks: 3 + 2, in an order of the caller's
    ports = (_free_port(), _free_port())
    torch.multiprocessing.spawn(_predict_rank, args=(2, ports, manifest, model, ids, str(tmp_path)),
                                nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"pred{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["kept"] == sorted(ids[0::2]) and ranks[1]["kept"] == sorted(ids[1::2])  # a shard each
    for r in ranks:  # every rank returns the whole table, in the caller's order
        assert r["scores"]["case_id"].tolist() == ids
    assert main(["--quiet", "predict", manifest, "--model", model, "--out", str(tmp_path / "one"),
                 "--cases", ",".join(ids), "--device", "cpu"]) == 0
    one, two = (pd.read_csv(tmp_path / d / "scores.csv") for d in ("one", "dist"))
    assert two["case_id"].tolist() == ids
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-6)
    for cid in ids:  # the predictions on the scans' grids, identical to one process's
        a, b = (nib.load(str(tmp_path / d / f"{cid}.nii.gz")) for d in ("one", "dist"))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    written = sorted(p.name for p in (tmp_path / "dist").glob("*.nii.gz"))
    assert written == sorted(f"{c}.nii.gz" for c in ids)
