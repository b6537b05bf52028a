"""Unit descriptions: TextSpan and SOMP on planted dictionaries, against direct implementations on
the samples; the dictionary's sources and errors; the table."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from snakemake_runs import snakemake, tiny_config
from torch import Tensor

from residual.config.errors import ConfigError
from residual.config.validate import validate_config
from residual.descriptions.components import component_ends
from residual.descriptions.describe import Streaming, describe_unit_file, selected_units
from residual.descriptions.dictionary import Dictionary
from residual.descriptions.options import DescriptionSettings, description_datasets
from residual.descriptions.somp import somp
from residual.descriptions.sources import DictionaryError, DictionarySource, check_source, fetch_texts, read_texts
from residual.descriptions.table import (
    descriptions_markdown,
    descriptions_table,
    method_summary,
    no_text_tower_rows,
    write_descriptions,
)
from residual.descriptions.textspan import text_span
from residual.spectral.pca import fit_pca, fit_unit_file
from residual.units.layout import UnitLayout

WIDTH, ATOMS, SAMPLES = 24, 120, 800
PLANTED = [7, 31, 90]
SCALES = [6.0, 3.0, 1.5]


def planted(seed: int = 0, dictionary: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """outputs [n, d] = random weights (std 6, 3, 1.5) on 3 atoms of a random unit-norm dictionary
    [m, d], plus an offset and noise of std 0.01."""
    generator = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(ATOMS, WIDTH, generator=generator), dim=-1) if dictionary is None else dictionary
    weights = torch.randn(SAMPLES, len(PLANTED), generator=generator) * torch.tensor(SCALES)
    offset = torch.randn(WIDTH, generator=generator)
    outputs = weights @ atoms[PLANTED] + offset + 0.01 * torch.randn(SAMPLES, WIDTH, generator=generator)
    return outputs, atoms


def reference_text_span(outputs: Tensor, texts: Tensor, rank: int, k: int) -> list[int]:
    """The reference algorithm written directly on the samples (SVD, projection, deflation of data and texts)."""
    data, texts = outputs.double(), texts.double()
    _, _, vh = torch.linalg.svd(data, full_matrices=False)
    span = vh[:rank]
    texts = texts @ span.T @ span
    data = data - data.mean(dim=0)
    picks = []
    for _ in range(k):
        spread = (data @ texts.T).std(dim=0)
        spread[picks] = -1
        pick = int(spread.argmax())
        picks.append(pick)
        direction = texts[pick] / texts[pick].norm()
        data = data - (data @ direction)[:, None] * direction
        texts = texts - (texts @ direction)[:, None] * direction
    return picks


def reference_somp(outputs: Tensor, atoms: Tensor, k: int) -> tuple[list[int], list[float]]:
    """SOMP on the centred samples with an explicit least-squares refit; picks and residual norms (k + 1)."""
    data, atoms = outputs.double(), atoms.double()
    data = data - data.mean(dim=0)
    residual, picks, norms = data, [], [float(data.norm())]
    for _ in range(k):
        scores = (residual @ atoms.T).abs().sum(dim=0)
        scores[picks] = -1
        picks.append(int(scores.argmax()))
        chosen = atoms[picks]  # [s, d]
        weights = torch.linalg.lstsq(chosen.T, data.T).solution  # [s, n]
        residual = data - (chosen.T @ weights).T
        norms.append(float(residual.norm()))
    return picks, norms


def coordinates(outputs: Tensor) -> tuple[Tensor, Tensor, float]:
    """Centred coordinates [n, r] in the kept components [r, d], and the total variance."""
    pca = fit_pca(outputs[:, None], ["head_0_0"])
    centred = outputs.double() - pca.means[0].double()
    return centred @ pca.components[0].double().T, pca.components[0], float(pca.total_variance[0])


def test_text_span_recovers_planted_atoms_and_matches_the_reference() -> None:
    outputs, atoms = planted()
    pca = fit_pca(outputs[:, None], ["head_0_0"])
    found = text_span(pca, 0, atoms, rank=80, k=6)
    assert set(found.indices[:3]) == set(PLANTED)
    assert found.indices == reference_text_span(outputs, atoms, rank=80, k=6)
    # Decreasing over the planted rounds. Past them only noise is left, and the reference's criterion
    # (the variance along each projected text, not renormalised) need not order what a pick explains.
    assert found.explained[0] > found.explained[1] > found.explained[2] > 100 * max(found.explained[3:]), found.explained
    assert found.explained[0] > 0.5 and 0.99 < found.total <= 1 + 1e-9  # three atoms hold all but the noise
    torch.testing.assert_close(
        torch.tensor(found.remaining, dtype=torch.float64), 1 - torch.tensor(found.explained, dtype=torch.float64).cumsum(0)
    )


def test_text_span_with_a_span_smaller_than_the_data() -> None:
    """rank below the data's rank: the dictionary is projected on the top right singular vectors only."""
    outputs, atoms = planted(1)
    pca = fit_pca(outputs[:, None], ["head_0_0"])
    assert text_span(pca, 0, atoms, rank=3, k=3).indices == reference_text_span(outputs, atoms, rank=3, k=3)


def test_somp_recovers_planted_atoms_and_matches_the_reference() -> None:
    outputs, atoms = planted(2)
    z, basis, total = coordinates(outputs)
    found = somp(z, basis, atoms, total, k=6, chunk=128)  # several chunks
    picks, norms = reference_somp(outputs, atoms, k=6)
    assert set(found.indices[:3]) == set(PLANTED) and found.indices == picks
    # The coordinates use the PCA's float32 mean and components (orthonormal to float32 rounding),
    # the reference the exact float64 samples: fractions of the variance agree to about 1e-7.
    expected = torch.tensor(norms[1:], dtype=torch.float64) ** 2 / norms[0] ** 2
    torch.testing.assert_close(torch.tensor(found.remaining, dtype=torch.float64), expected, rtol=0, atol=1e-7)
    assert all(a > b for a, b in zip([1.0, *found.remaining], found.remaining)), found.remaining
    assert 0.99 < found.total <= 1 + 1e-9


@pytest.mark.parametrize("method", ["textspan", "somp"])
def test_duplicate_and_zero_rows(method: str) -> None:
    """A duplicated planted atom is picked once; a zero row is never picked; nothing is NaN."""
    _, atoms = planted(3)
    dictionary = torch.cat([atoms, atoms[PLANTED[0]][None], torch.zeros(1, WIDTH)])
    outputs, _ = planted(3, dictionary)
    if method == "textspan":
        found = text_span(fit_pca(outputs[:, None], ["head_0_0"]), 0, dictionary, rank=80, k=20)
    else:
        z, basis, total = coordinates(outputs)
        found = somp(z, basis, dictionary, total, k=20)
    assert len(found.indices) == 20 and len(set(found.indices)) == 20
    assert ATOMS + 1 not in found.indices  # the zero row
    assert len({PLANTED[0], ATOMS} & set(found.indices[:3])) == 1  # the atom or its duplicate, once, first
    assert not ({PLANTED[0], ATOMS} <= set(found.indices)), "a duplicate explains nothing once its twin is picked"
    assert all(torch.isfinite(torch.tensor(found.explained)))


def test_a_constant_unit_has_no_description() -> None:
    outputs = torch.ones(50, WIDTH)
    _, atoms = planted()
    pca = fit_pca(outputs[:, None], ["head_0_0"])
    assert text_span(pca, 0, atoms).indices == []
    z, basis, total = coordinates(outputs)
    assert somp(z, basis, atoms, total).indices == []


def test_component_ends() -> None:
    components = torch.eye(3, WIDTH)
    dictionary = F.normalize(torch.randn(40, WIDTH, generator=torch.Generator().manual_seed(4)), dim=-1)
    indices, cosines = component_ends(components, dictionary, per_end=5)
    assert indices.shape == cosines.shape == (3, 2, 5)
    for component in range(3):
        order = dictionary[:, component].argsort(descending=True)
        assert indices[component, 0].tolist() == order[:5].tolist()
        assert indices[component, 1].tolist() == order.flip(0)[:5].tolist()


def test_selected_units() -> None:
    layout = UnitLayout(layers=6, heads=2, head_dim=4, out_dim=8)
    assert selected_units(layout, 2) == ["head_4_0", "head_4_1", "head_5_0", "head_5_1"]
    assert len(selected_units(layout, 10)) == 12 and selected_units(layout, "all") == layout.names


# Dictionary sources ---------------------------------------------------------------------------


def test_dictionary_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = b"a photo of a dog\n\n  a red square  \na photo of a dog\n a red square\n"
    (tmp_path / "list.txt").write_bytes(lines)
    expected = ["a photo of a dog", "a red square"]  # each text once, where it first appears
    digest = hashlib.sha256(lines).hexdigest()
    for source in (str(tmp_path / "list.txt"), (tmp_path / "list.txt").as_uri()):  # a path, a URL (downloaded once)
        output = tmp_path / "out" / "dictionary.txt"
        caplog.clear()
        assert fetch_texts(DictionarySource(source, digest), output) == expected
        assert "2 lines repeat an earlier one and are dropped; 2 descriptions remain" in caplog.text
        assert read_texts(output) == expected
    with pytest.raises(DictionaryError, match=r"descriptions\.dictionary\.sha256.*the config expects 00"):
        fetch_texts(DictionarySource((tmp_path / "list.txt").as_uri(), "00" * 32), tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()
    demo = DictionarySource("builtin:demo")
    check_source(demo)
    assert len(fetch_texts(demo, tmp_path / "demo.txt")) >= 200


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, r"descriptions\.dictionary\.source.*does not exist"),
        (b"\n  \n", r"descriptions\.dictionary\.source.*holds no description"),
    ],
)
def test_missing_or_empty_dictionary_is_a_config_error(tmp_path: Path, write: bytes | None, message: str) -> None:
    path = tmp_path / "list.txt"
    if write is not None:
        path.write_bytes(write)
    with pytest.raises(DictionaryError, match=message):
        check_source(DictionarySource(str(path)))
    with pytest.raises(DictionaryError, match=r"no builtin list 'nope'; builtin lists: \['demo', 'world'\]"):
        check_source(DictionarySource("builtin:nope"))


def test_unreachable_url_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DictionaryError, match=r"descriptions\.dictionary\.source.*fetching .* failed"):
        fetch_texts(DictionarySource((tmp_path / "absent.txt").as_uri()), tmp_path / "out.txt")


# On a unit file, and the table ----------------------------------------------------------------


def test_describe_unit_file_and_table(digit_units: dict[str, Path], tmp_path: Path) -> None:
    pca_path = tmp_path / "pca.safetensors"
    fit_unit_file(digit_units["train"]).save(pca_path)
    dictionary = Dictionary(
        [f"text {i}" for i in range(30)], F.normalize(torch.randn(30, 32, generator=torch.Generator().manual_seed(5)), dim=-1), {}
    )
    settings = DescriptionSettings(split="train", units=1, rank=80, k=4, components=2, per_end=2)
    rows = describe_unit_file(digit_units["train"], pca_path, dictionary, settings, Streaming(batch_size=40, group_size=3))
    heads = [f"head_1_{head}" for head in range(4)]  # the tiny model: 2 layers of 4 heads
    assert rows["unit"].unique(maintain_order=True).to_list() == heads
    assert rows.group_by("unit", "method").len()["len"].unique().sort().to_list() == [4, 8]  # k picks; 2 x 2 x 2 ends
    assert (rows.filter(pl.col("method") != "component")["explained_total"] <= 1 + 1e-6).all()

    # The val split fits its own moments; a different group size gives the same picks.
    val = describe_unit_file(
        digit_units["val"], pca_path, dictionary, DescriptionSettings(**{**settings.params(), "split": "val"})
    )
    assert val.filter(pl.col("method") == "component").equals(rows.filter(pl.col("method") == "component"))

    rows.with_columns(model=pl.lit("clip_tiny"), dataset=pl.lit("digits"), split=pl.lit("train")).write_parquet(
        tmp_path / "part.parquet"
    )
    table = descriptions_table([tmp_path / "part.parquet"], "tiny", ["dino_tiny"])
    assert table.columns[:5] == ["run", "model", "dataset", "split", "unit"]
    assert table.filter(pl.col("model") == "dino_tiny")["note"].str.contains("no text tower").all()
    outputs = [tmp_path / f"descriptions.{ext}" for ext in ("parquet", "csv", "md", "tex")]
    write_descriptions(table, outputs, "Unit descriptions", demo=True)
    assert pl.read_parquet(outputs[0]).equals(table)
    markdown = outputs[2].read_text()
    assert "not the paper's" in markdown and "## clip_tiny · digits (train) · head_1_3" in markdown
    assert "## dino_tiny\n\nno text tower" in markdown and "PC2" in markdown
    assert r"\begin{tabular}" in outputs[3].read_text()


def test_fewer_texts_than_asked_for_are_stated_in_the_table(digit_units: dict[str, Path], tmp_path: Path) -> None:
    """`k` and `per_end` above a 3-text dictionary: every method says in the table how many texts it
    found and why; with a dictionary that explains nothing, each keeps one row, without a text, saying so."""
    pca_path = tmp_path / "pca.safetensors"
    fit_unit_file(digit_units["train"]).save(pca_path)
    texts = ["a | b", "c", "d"]
    dictionary = Dictionary(texts, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(6)), dim=-1), {})
    settings = DescriptionSettings(split="train", units=1, rank=80, k=5, components=1, per_end=4)
    rows = describe_unit_file(digit_units["train"], pca_path, dictionary, settings, Streaming(batch_size=40, group_size=4))
    notes = {method: set(group["note"]) for (method,), group in rows.group_by("method")}
    assert notes == {
        "textspan": {"TextSpan: 3 of the 5 texts asked for (`descriptions.k`): the dictionary has 3 texts"},
        "somp": {"SOMP: 3 of the 5 texts asked for (`descriptions.k`): the dictionary has 3 texts"},
        "component": {"component ends: 3 of the 4 texts asked for (`descriptions.per_end`): the dictionary has 3 texts"},
    }
    table = descriptions_table([write_part(rows, tmp_path)], "tiny", [])
    markdown = descriptions_markdown(table, "Unit descriptions", demo=False)
    assert r"> TextSpan: 3 of the 5 texts asked for (\`descriptions.k\`): the dictionary has 3 texts" in markdown
    assert r"| a \| b " in markdown  # a text's '|' stays in its cell

    flat = Dictionary(texts, torch.zeros(3, 32), {})  # nothing to explain with: no pick at all
    rows = describe_unit_file(digit_units["train"], pca_path, flat, settings)
    picks = rows.filter(pl.col("method") != "component")
    assert picks.group_by("unit").len()["len"].unique().to_list() == [2] and picks["text"].null_count() == picks.height
    none = "0 of the 5 texts asked for (`descriptions.k`): the dictionary has 3 texts"
    assert set(picks["note"]) == {f"TextSpan: {none}", f"SOMP: {none}"}
    assert method_summary(descriptions_table([write_part(rows, tmp_path)], "tiny", [])).is_empty()


def write_part(rows: pl.DataFrame, folder: Path) -> Path:
    """A describe job's file of `rows` (clip_tiny on digits, train)."""
    path = folder / "part.parquet"
    rows.with_columns(model=pl.lit("clip_tiny"), dataset=pl.lit("digits"), split=pl.lit("train")).write_parquet(path)
    return path


def test_a_table_of_models_without_text_tower_only() -> None:
    table = descriptions_table([], "run", ["vit", "dino"])
    assert table["model"].to_list() == ["vit", "dino"] and table["unit"].null_count() == 2
    assert descriptions_markdown(table, "t", demo=False).count("no text tower") == 2
    assert no_text_tower_rows([]).is_empty()


# Config ---------------------------------------------------------------------------------------


def test_config_defaults_and_mistakes() -> None:
    config = validate_config(tiny_config())
    settings = DescriptionSettings.from_config(config)
    assert settings == DescriptionSettings(split="train", units=4, rank=80, k=3, components=3, per_end=3)
    assert DescriptionSettings(**settings.params()) == settings and description_datasets(config) == ["digits"]
    # A builtin list is a setting by its text, never by its path in the checkout (which may move).
    shipped = (REPO / "src/residual/descriptions/texts/demo.txt").read_bytes()
    source = DictionarySource.from_config(config)
    assert source == DictionarySource("builtin:demo", hashlib.sha256(shipped).hexdigest()) and source.input_files() == []
    assert DictionarySource("lists/mine.txt").input_files() == ["lists/mine.txt"]
    for edit, message in [
        (lambda c: c["descriptions"].update(datasets=["cifar10"]), r"at `descriptions\.datasets`: 'cifar10' is not one of"),
        (lambda c: c["descriptions"].update(units="some"), r"at `descriptions\.units`"),
        (lambda c: c["descriptions"]["dictionary"].update(sha256="abc"), r"at `descriptions\.dictionary\.sha256`"),
    ]:
        config = tiny_config()
        edit(config)
        with pytest.raises(ConfigError, match=message):
            validate_config(config)


def test_a_missing_dictionary_stops_a_dry_run(tmp_path: Path) -> None:
    config = tiny_config()
    config["descriptions"]["dictionary"]["source"] = str(tmp_path / "absent.txt")
    run = snakemake(tmp_path, "-n", config=config, timeout=300)
    assert run.returncode != 0
    assert re.search(r"descriptions\.dictionary\.source.*absent\.txt.* does not exist", run.stdout + run.stderr)
