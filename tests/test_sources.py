"""The paper cohort's adapters on tiny fixtures laid out like BraTS 2020 (CBICA and Kaggle), TextBraTS and
ds000221; fetch clients are replaced by fakes that write the same layout."""

from __future__ import annotations

import hashlib
import os
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brain3d.data import fetch, layouts, manifest, sources
from brain3d.data.manifest import CohortError
from brain3d.data.reports import healthy_report

MAX_VOXELS = 512**3  # params.yaml preprocess.max_voxels
REPORTS = {
    1: "The lesion is located in the left frontal lobe with surrounding edema.",
    2: "A mass in the right temporal lobe shows necrosis and enhancement.",
    3: "Lesions involve both hemispheres with compression of the ventricles.",
    355: "An abnormal signal is seen near the midline.",
}
LATERALITY = {1: "left", 2: "right", 3: "bilateral", 355: "undefined"}


def _nifti(path: Path, seed: int, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 100, (8, 8, 6)).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def make_brats(base: Path, numbers: list[int], kaggle: bool = False) -> Path:
    """BraTS 2020 training folders (all four modalities + seg); the Kaggle mirror nests them two levels
    deeper, misnames case 355's seg and ships the validation set beside them."""
    train = base / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData" if kaggle else base
    for n in numbers:
        sid = f"BraTS20_Training_{n:03d}"
        for i, mod in enumerate(("flair", "t1", "t1ce", "t2")):
            _nifti(train / sid / f"{sid}_{mod}.nii", seed=n * 10 + i)
        seg = "W39_1998.09.19_Segm.nii" if kaggle and n == 355 else f"{sid}_seg.nii"
        _nifti(train / sid / seg, seed=n, dtype=np.uint8)
    (train / "name_mapping.csv").write_text("BraTS_2020_subject_ID\nBraTS20_Training_001\n")
    (train / "survival_info.csv").write_text("Brats20ID,Age\nBraTS20_Training_001,60\n")
    if kaggle:
        val = base / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_001"
        _nifti(val / "BraTS20_Validation_001_flair.nii", seed=999)
    return train


def make_textbrats(base: Path, numbers: list[int]) -> None:
    for n in numbers:
        sid = f"BraTS20_Training_{n:03d}"
        (base / sid).mkdir(parents=True, exist_ok=True)
        (base / sid / f"{sid}_flair_text.txt").write_text(REPORTS[n] + "\n", encoding="utf-8")


def make_ds000221(base: Path, highres: list[str], lowres: list[str]) -> None:
    """BIDS ds000221: participants.tsv and ses-01 FLAIRs (plus a T1w that must be ignored)."""
    base.mkdir(parents=True, exist_ok=True)
    subjects = sorted(set(highres) | set(lowres))
    lines = ["participant_id\tgender\tage"] + [f"sub-{s}\tF\t25-30" for s in subjects]
    (base / "participants.tsv").write_text("\n".join(lines) + "\n")
    for acq, subs in (("highres", highres), ("lowres", lowres)):
        for s in subs:
            anat = base / f"sub-{s}" / "ses-01" / "anat"
            _nifti(anat / f"sub-{s}_ses-01_acq-{acq}_FLAIR.nii.gz", seed=int(s) + len(acq))
            _nifti(anat / f"sub-{s}_ses-01_acq-mp2rage_T1w.nii.gz", seed=int(s))


def _cfg(tmp_path: Path, **kw) -> dict:
    cfg = {
        "source": "real",
        "brats_dir": "data/brats",
        "textbrats_dir": "data/TextBraTSData",
        "ds000221_dir": "data/ds000221",
        "n_tumour": 3,
        "n_healthy": 2,
        "sha_cache": "cache/sha.json",
        "workers": 2,
    }
    return {**cfg, **kw}


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A complete small cohort under tmp_path: BraTS 001-003 (CBICA layout), their reports, 4 ds000221."""
    make_brats(tmp_path / "data/brats", [1, 2, 3])
    make_textbrats(tmp_path / "data/TextBraTSData", [1, 2, 3])
    make_ds000221(tmp_path / "data/ds000221", highres=["010001", "010003"], lowres=["010001", "010002"])
    return tmp_path


def test_cbica_layout_gives_manifest_rows(full: Path) -> None:
    df = sources.build_real_cohort(_cfg(full), full, fetch=False, max_voxels=MAX_VOXELS)
    assert manifest.validate(df, full) == []
    tumour = df[df.cohort == "tumour"].set_index("subject")
    assert list(tumour.index) == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    for n, lat in list(LATERALITY.items())[:3]:
        row = tumour.loc[f"BraTS20_Training_{n:03d}"]
        assert row.laterality == lat and row.report == REPORTS[n] and row.source == "brats2020"
        assert row.volume == f"data/brats/BraTS20_Training_{n:03d}/BraTS20_Training_{n:03d}_flair.nii"
        assert row.seg == f"data/brats/BraTS20_Training_{n:03d}/BraTS20_Training_{n:03d}_seg.nii"
        assert bool(row.skull_stripped)
        assert row.sha256 == hashlib.sha256((full / row.volume).read_bytes()).hexdigest()
    healthy = df[df.cohort == "healthy"].set_index("subject")
    assert list(healthy.index) == ["sub-010001", "sub-010003"]  # both highres; lowres-only 010002 not needed
    assert (
        set(healthy.laterality) == {"none"}
        and set(healthy.seg) == {""}
        and set(healthy.source) == {"ds000221"}
    )
    assert not healthy.skull_stripped.any()
    assert healthy.loc["sub-010001", "volume"].endswith("sub-010001_ses-01_acq-highres_FLAIR.nii.gz")
    assert healthy.loc["sub-010003", "report"] == healthy_report("sub-010003")


def test_kaggle_mirror_with_misnamed_seg_and_outside_root(tmp_path: Path) -> None:
    root, data = tmp_path / "repo", tmp_path / "elsewhere"
    root.mkdir()
    train = make_brats(data / "kaggle", [1, 2, 355], kaggle=True)
    make_textbrats(data / "hub" / "TextBraTSData", [1, 2, 355])  # as snapshot_download writes it
    make_ds000221(data / "ds", highres=["010001"], lowres=["010002"])
    cfg = _cfg(
        root,
        brats_dir=str(data / "kaggle"),
        textbrats_dir=str(data / "hub"),
        ds000221_dir=str(data / "ds"),
        n_tumour=369,
        allow_subset=True,
    )
    df = sources.build_real_cohort(cfg, root, fetch=False, max_voxels=MAX_VOXELS).set_index("subject")
    assert "BraTS20_Validation_001" not in df.index
    case = df.loc["BraTS20_Training_355"]
    assert case.seg == str(
        train / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii"
    )  # absolute: outside root
    assert case.laterality == "undefined"
    assert df.loc["sub-010002", "volume"].endswith("acq-lowres_FLAIR.nii.gz")  # lowres fills up the pick


def test_every_problem_in_one_message_with_how_to_get_it(full: Path) -> None:
    (full / "data/TextBraTSData/BraTS20_Training_002/BraTS20_Training_002_flair_text.txt").unlink()
    make_textbrats(full / "data/TextBraTSData", [355])  # a report without a volume
    (full / "data/brats/BraTS20_Training_003/BraTS20_Training_003_flair.nii").write_bytes(
        b"<html>oops</html>"
    )
    cfg = _cfg(full, n_tumour=6, n_healthy=4)
    with pytest.raises(CohortError) as info:
        sources.build_real_cohort(cfg, full, fetch=False, max_voxels=MAX_VOXELS)
    msg = str(info.value)
    assert len(info.value.errors) == 5, msg
    for needle in (
        "3 of 6 subjects; missing BraTS20_Training_004-006",
        "BraTS20_Training_002",
        "no TextBraTS FLAIR report",
        "BraTS20_Training_355",
        "report without a BraTS FLAIR volume",
        "BraTS20_Training_003",
        "not a readable NIfTI",
        "3 subjects with a FLAIR (2 acq-highres, 1 acq-lowres), 4 needed",
        sources.BRATS_URL,
        "KAGGLE_USERNAME",
        "pip install kaggle",
        fetch.KAGGLE_DATASET,
        "Jupitern52/TextBraTS",
        "openneuro-py download --dataset ds000221",
    ):
        assert needle in msg, needle


def test_missing_datasets_give_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(sources.MissingDataError) as info:
        sources.build_real_cohort(
            _cfg(tmp_path, n_tumour=369, n_healthy=99), tmp_path, fetch=False, max_voxels=MAX_VOXELS
        )
    assert len(info.value.errors) == 4  # BraTS folder, TextBraTS folder, participants.tsv, 0 of 99 healthy
    assert len(info.value.hints) == 3


def test_counts_and_workers_have_no_default(tmp_path: Path) -> None:
    """params.yaml is their one home: a download section without them fails naming each, before any work."""
    from brain3d.config import ParamsError

    cfg = {k: v for k, v in _cfg(tmp_path).items() if k not in ("n_tumour", "n_healthy", "workers")}
    with pytest.raises(
        ParamsError, match=r"missing download\.n_tumour, download\.n_healthy, download\.workers"
    ):
        sources.build_real_cohort(cfg, tmp_path, fetch=False, max_voxels=MAX_VOXELS)


def test_healthy_pick_is_deterministic_and_prefers_highres(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    make_ds000221(ds, highres=["010009", "010004", "010007"], lowres=["010001", "010002", "010004"])
    picked = layouts.find_healthy_scans(ds)
    assert [(s.subject, s.acq) for s in picked] == [
        ("sub-010004", "highres"),
        ("sub-010007", "highres"),
        ("sub-010009", "highres"),
        ("sub-010001", "lowres"),
        ("sub-010002", "lowres"),
    ]
    assert [s.subject for s in layouts.find_healthy_scans(ds, ("lowres", "highres"))][:3] == [
        "sub-010001",
        "sub-010002",
        "sub-010004",
    ]


def test_sha_cache_skips_unchanged_volumes(full: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def counting(path):
        calls.append(Path(path))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    monkeypatch.setattr(sources, "sha256_file", counting)
    first = sources.build_real_cohort(_cfg(full), full, fetch=False, max_voxels=MAX_VOXELS)
    assert len(calls) == 5 and (full / "cache/sha.json").is_file()
    calls.clear()
    assert (
        sources.build_real_cohort(_cfg(full), full, fetch=False, max_voxels=MAX_VOXELS).equals(first)
        and calls == []
    )
    changed = full / "data/brats/BraTS20_Training_002/BraTS20_Training_002_flair.nii"
    mtime = changed.stat().st_mtime_ns
    _nifti(changed, seed=12345)  # same size; bump mtime past the filesystem's timestamp granularity
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))
    third = sources.build_real_cohort(_cfg(full), full, fetch=False, max_voxels=MAX_VOXELS).set_index(
        "subject"
    )
    assert calls == [changed]
    assert third.loc["BraTS20_Training_002", "sha256"] == hashlib.sha256(changed.read_bytes()).hexdigest()


class FakeClients:
    """openneuro, huggingface_hub.snapshot_download and kaggle replaced by fakes writing fixture layouts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import huggingface_hub
        from huggingface_hub import constants

        self.openneuro: list[dict] = []
        self.hub: list[dict] = []
        self.kaggle: list[tuple] = []
        self.hub_offline_during: list[bool] = []
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setitem(sys.modules, "openneuro", types.SimpleNamespace(download=self._openneuro))
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self._snapshot)
        ext = types.ModuleType("kaggle.api.kaggle_api_extended")
        clients = self

        class KaggleApi:
            def authenticate(self):
                pass

            def dataset_download_files(self, dataset, path, unzip, quiet):
                clients.kaggle.append((dataset, path, unzip))
                make_brats(Path(path), [1, 2, 3], kaggle=True)

        ext.KaggleApi = KaggleApi
        monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
        monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
        monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", ext)

    def _openneuro(self, **kw):
        self.openneuro.append(kw)
        acq = "highres" if "acq-highres" in kw["include"][0] else "lowres"
        subjects = ["010001", "010003"] if acq == "highres" else ["010001", "010002"]
        make_ds000221(
            Path(kw["target_dir"]), **{acq: subjects, ("lowres" if acq == "highres" else "highres"): []}
        )

    def _snapshot(self, **kw):
        from huggingface_hub import constants

        self.hub.append(kw)
        self.hub_offline_during.append(constants.HF_HUB_OFFLINE)
        make_textbrats(Path(kw["local_dir"]) / "TextBraTSData", [1, 2, 3])


def _no_kaggle_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))


@pytest.mark.parametrize("n_healthy, acqs", [(2, ["highres"]), (3, ["highres", "lowres"])])
def test_fetch_downloads_only_what_is_missing(
    full: Path, monkeypatch: pytest.MonkeyPatch, n_healthy: int, acqs: list[str]
) -> None:
    import shutil

    from huggingface_hub import constants

    shutil.rmtree(full / "data/TextBraTSData")
    shutil.rmtree(full / "data/ds000221")
    fake = FakeClients(monkeypatch)
    df = sources.build_real_cohort(_cfg(full, n_healthy=n_healthy), full, fetch=True, max_voxels=MAX_VOXELS)
    assert fake.openneuro == [
        {
            "dataset": "ds000221",
            "tag": None,
            "target_dir": str(full / "data/ds000221"),
            "include": [f"sub-*/ses-01/anat/sub-*_ses-01_acq-{a}_FLAIR.nii.gz", "participants.tsv"],
        }
        for a in acqs
    ]
    assert fake.hub == [
        {
            "repo_id": "Jupitern52/TextBraTS",
            "repo_type": "dataset",
            "local_dir": str(full / "data/TextBraTSData"),
            "allow_patterns": ["*_flair_text.txt"],
        }
    ]
    assert fake.hub_offline_during == [False] and constants.HF_HUB_OFFLINE is True  # lifted, then restored
    assert fake.kaggle == []  # BraTS was already there
    assert len(df) == 3 + n_healthy and manifest.validate(df, full) == []
    assert df.set_index("subject").loc["BraTS20_Training_002", "laterality"] == "right"


def test_fetch_false_never_calls_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeClients(monkeypatch)
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    with pytest.raises(CohortError):
        sources.build_real_cohort(_cfg(tmp_path), tmp_path, fetch=False, max_voxels=MAX_VOXELS)
    assert fake.openneuro == fake.hub == fake.kaggle == []


def test_brats_fetch_needs_kaggle_credentials(full: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.rmtree(full / "data/brats")
    fake = FakeClients(monkeypatch)
    _no_kaggle_credentials(monkeypatch, full / "home")
    with pytest.raises(CohortError) as info:
        sources.build_real_cohort(_cfg(full), full, fetch=True, max_voxels=MAX_VOXELS)
    assert (
        fake.kaggle == []
        and "no Kaggle credentials" in str(info.value)
        and sources.BRATS_URL in str(info.value)
    )
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    df = sources.build_real_cohort(_cfg(full), full, fetch=True, max_voxels=MAX_VOXELS)
    assert fake.kaggle == [(fetch.KAGGLE_DATASET, str(full / "data/brats"), True)]
    assert (
        df.volume.str.startswith("data/brats/BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/").sum()
        == 3
    )
