"""The documentation against the code: the params reference names every key of params.yaml and
no key that params.yaml lacks; every `dvc exp run ... -S` of the README and docs/*.md is applied
to params.yaml by DVC's own override code and gives params that load; internal links resolve."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import shutil
from collections import Counter
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from synthdet.params import GenerateSubjectParams, SubjectParams, load_params

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
CONFIGURATION = REPO / "docs/configuration.md"

# Library option blocks, passed through unchanged: documented as a block, any key allowed below.
PASS_THROUGH = {"personalize.lora", "train_detector.yolo"}
# Maps whose keys are names the user chooses, each name -> a fixed set of keys.
NAMED_MAPS = {
    "shared.subjects": {f.name for f in dataclasses.fields(SubjectParams)},
    "generate.subjects": {f.name for f in dataclasses.fields(GenerateSubjectParams)},
}
FILE_SUFFIXES = {"json", "jsonl", "yaml", "yml", "csv", "tsv", "png", "md", "txt"}


def read_params_yaml() -> dict:
    return YAML(typ="safe", pure=True).load((REPO / "params.yaml").read_text())


def required_keys(params: dict) -> set[str]:
    """Every section, every leaf key, pass-through blocks as one name, named maps with <name>."""
    keys = set(params)

    def walk(prefix: str, block: dict) -> None:
        for key, value in block.items():
            path = f"{prefix}.{key}"
            if path in NAMED_MAPS:
                keys.add(path)
                keys.update(f"{path}.<name>.{field}" for field in NAMED_MAPS[path] if value)
            elif isinstance(value, dict) and value and path not in PASS_THROUGH:
                walk(path, value)
            else:
                keys.add(path)

    for section, block in params.items():
        walk(section, block)
    return keys


def key_exists(params: dict, dotted: str) -> bool:
    """Whether `dotted` names a section, a key or a block of params.yaml (any key below a
    pass-through block, any name in a named map)."""
    parts = dotted.split(".")
    node, path = params, ""
    index = 0
    while index < len(parts):
        part = parts[index]
        path = f"{path}.{part}" if path else part
        if path in PASS_THROUGH:
            return True
        if path in NAMED_MAPS:
            rest = parts[index + 1 :]
            return not rest or (len(rest) == 2 and rest[1] in NAMED_MAPS[path]) or len(rest) == 1
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        index += 1
    return True


def documented_keys(markdown: str, sections: set[str]) -> set[str]:
    """The `section.key...` names inside backticks (an `-S` value's left side included; file
    names such as `class_images.json` and paths such as `metrics/generate.json` left out); code
    blocks count as spans."""
    names = set()
    alternatives = "|".join(sorted(sections, key=len)[::-1])
    pattern = re.compile(rf"(?<![\w./<>@+~-])((?:{alternatives})(?:\.[\w<>]+)*)")
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    for span in [*re.findall(r"`([^`]+)`", prose), *code_blocks(markdown)]:
        for match in pattern.finditer(span):
            name = match.group(1)
            if name.rsplit(".", 1)[-1] in FILE_SUFFIXES and "." in name:
                continue
            names.add(name)
    return names


def reference_problems(markdown: str, params: dict) -> list[str]:
    named = documented_keys(markdown, set(params))
    missing = sorted(required_keys(params) - named)
    unknown = sorted(name for name in named if not key_exists(params, name))
    return [f"params.yaml key not in the doc: {key}" for key in missing] + [
        f"doc names a key params.yaml lacks: {key}" for key in unknown
    ]


def test_configuration_reference_names_every_key_and_no_other():
    """docs/configuration.md names every params.yaml section and key in backticks, and every
    `section.key` it names exists: the reference cannot drift from params.yaml silently."""
    params = read_params_yaml()
    assert reference_problems(CONFIGURATION.read_text(), params) == []


def test_configuration_reference_check_can_fail():
    """The check above sees a key the doc leaves out, a key params.yaml lacks, and names below
    pass-through blocks and named maps the way the reference writes them."""
    params = read_params_yaml()
    doc = CONFIGURATION.read_text()
    without = doc.replace("`generate.filters.realism_k`", "realism k")
    assert reference_problems(without, params) == [
        "params.yaml key not in the doc: generate.filters.realism_k"
    ]
    invented = doc + "\n`-S generate.filters.realism=3`, `shared.subjects.pear.colour`\n"
    assert reference_problems(invented, params) == [
        "doc names a key params.yaml lacks: generate.filters.realism",
        "doc names a key params.yaml lacks: shared.subjects.pear.colour",
    ]
    allowed = "`train_detector.yolo.mosaic`, `shared.subjects.pear.class_noun`, `class_images.json`"
    assert reference_problems(doc + allowed, params) == []
    assert "shared.subjects.<name>.stem_pattern" in required_keys(params)
    assert "train_detector.yolo" in required_keys(params)
    assert "train_detector.yolo.imgsz" not in required_keys(params)
    assert {"shared", "evaluate"} <= required_keys(params)


# --- every `dvc exp run -S` of the docs, through DVC's own override code ---------------------


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


def commands(markdown: str) -> list[str]:
    """Every `dvc exp run ...` of a page: lines of fenced blocks (continuations joined, shell
    variables set in the block expanded) and inline code spans."""
    found = []
    for block in code_blocks(markdown):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if re.match(r"^[A-Za-z_]\w*=", line):
                name, _, value = shlex.split(line, comments=True)[0].partition("=")
                variables[name] = value
            elif line.startswith("dvc exp run"):
                for name, value in variables.items():
                    line = re.sub(rf"\${{?{name}}}?(?!\w)", lambda _, v=value: v, line)
                assert "$" not in line.split("#")[0], f"unexpanded variable in {line!r}"
                found.append(line)
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    for span in re.findall(r"`(dvc exp run [^`]*)`", prose):
        found.append(" ".join(span.split()))
    return found


def set_params(command: str) -> tuple[list[str], bool]:
    """The `-S` / `--set-param` values of a `dvc exp run` line, and whether it has --queue."""
    words = shlex.split(command, comments=True)
    values = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-S", "--set-param")]
    return values, "--queue" in words


def doc_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for command in commands(page.read_text()):
            if set_params(command)[0]:
                found.append((page.relative_to(REPO).as_posix(), command))
    return found


def apply_with_dvc(tmp_path: Path, values: list[str], queue: bool = False) -> Path:
    """params.yaml with `values` applied as `dvc exp run -S` applies them (DVC's own code)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps, to_hydra_overrides

    overrides = to_path_overrides(values)
    assert list(overrides) == ["params.yaml"]
    sweep = any(o.is_sweep_override() for o in to_hydra_overrides(overrides["params.yaml"]))
    if sweep and not queue:  # what dvc.repo.experiments.run does
        raise InvalidArgumentError("Sweep overrides can't be used without `--queue`")
    assert len(get_hydra_sweeps(overrides)) == 1, f"{values} queues several experiments"
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    apply_overrides(target, overrides["params.yaml"])
    return target


def test_docs_hold_the_commands_this_test_reads():
    """The extraction finds the commands it is meant to find (it can fail)."""
    found = doc_commands()
    pages = {page for page, _ in found}
    assert {"README.md", "docs/data.md", "docs/generation.md", "docs/evidence.md"} <= pages
    assert len(found) >= 20
    gpu = [c for _, c in found if "sd15-lora" in c]
    assert gpu and "-S shared.resolution=512" in gpu[0]  # $AT_512 expanded
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in gpu[0]  # $SD15 expanded


@pytest.mark.parametrize(("page", "command"), doc_commands())
def test_doc_set_params_pass_dvcs_override_parser_and_load(tmp_path, page, command):
    """Every `dvc exp run ... -S` of the README and docs/*.md, applied to params.yaml by DVC's
    own override code (Hydra's grammar; no sweep unless queued), gives params that load."""
    values, queue = set_params(command)
    load_params(apply_with_dvc(tmp_path, values, queue))


# Inline spellings the docs show as refused ("fails: ..."), and what DVC says.
REFUSED = {"-S prepare.group_pattern=(.+)": "Invalid `--set-param` value"}


def inline_set_params() -> list[tuple[str, str]]:
    """Every inline code span of the README and docs/*.md that is a run of `-S` values
    (`...` placeholders left out)."""
    found = []
    for page in PAGES:
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
        for span in re.findall(r"`(-S [^`]*)`", prose):
            if "..." not in span:
                found.append((page.relative_to(REPO).as_posix(), " ".join(span.split())))
    return found


@pytest.mark.parametrize(("page", "span"), inline_set_params())
def test_inline_set_params_pass_dvcs_override_parser(tmp_path, page, span):
    """Each inline `-S ...` of the docs (a fragment: applied alone, its params need not load)
    parses and applies with DVC's own code, except the spellings shown as refused, which are."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    values = set_params(f"dvc exp run {span}")[0]
    if span in REFUSED:
        shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
        with pytest.raises(InvalidArgumentError, match=re.escape(REFUSED[span])):
            apply_overrides(tmp_path / "params.yaml", values)
    else:
        apply_with_dvc(tmp_path, values)


def test_inline_set_params_are_found():
    spans = {span for _, span in inline_set_params()}
    assert set(REFUSED) <= spans
    assert """-S "generate.negative_prompt='blurry, low quality'\"""" in spans
    assert len(spans) >= 15


def worked_example_overrides() -> list[list[str]]:
    """The `-S` values of each `dvc exp run` of docs/data.md's worked example."""
    page = (REPO / "docs/data.md").read_text()
    example = page[page.index("## Worked example: a dataset of another class") :]
    example = example[: example.index("\n## ", 1)]
    return [values for command in commands(example) if (values := set_params(command)[0])]


def test_worked_example_says_what_the_doc_means(tmp_path):
    """The worked example's spellings give the params it describes; the unquoted regex is
    refused by the parser, as the quoting table says."""
    from dvc.exceptions import InvalidArgumentError

    overrides = worked_example_overrides()
    loaded = [load_params(apply_with_dvc(tmp_path, values)) for values in overrides]
    new_class, *regexes, noun = loaded
    assert list(new_class.shared.subjects) == ["pear"]
    assert new_class.shared.subjects["pear"].stem_pattern == ".*"
    assert new_class.shared.class_names == ("pear",)
    assert new_class.base_prompt == "a photo of pear"
    assert (new_class.prepare.group_pattern, new_class.train_detector.imgsz) == (None, 640)
    assert [params.prepare.group_pattern for params in regexes] == [r"(.+)-\d+"] * 2
    assert noun.shared.subjects["apple_tree"].class_noun == "pear tree"
    from dvc.utils.hydra import apply_overrides

    with pytest.raises(InvalidArgumentError, match="Invalid `--set-param` value"):
        apply_overrides(tmp_path / "params.yaml", ["prepare.group_pattern=(.+)"])


def test_quoting_table_comma_and_braces(tmp_path):
    """The quoting table's rows for a comma and for braces: unquoted, a comma is a Hydra sweep
    (`dvc exp run` refuses it, `--queue` makes two experiments) and braces do not parse; the
    quoted spellings give one value, comma and braces kept."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps, to_hydra_overrides

    table = CONFIGURATION.read_text()
    comma = """-S "generate.negative_prompt='blurry, low quality'\""""
    braces = """-S "class_images.prompt='a photo of {class_noun}'\""""
    prompts = """-S "generate.prompts=['a photo of {identifier} {class_noun} in the snow']\""""
    for spelling in (comma, braces, prompts):
        assert f"`{spelling}`" in table

    unquoted = ["generate.negative_prompt=blurry, low quality"]
    assert [o.is_sweep_override() for o in to_hydra_overrides(unquoted)] == [True]
    assert get_hydra_sweeps({"params.yaml": unquoted}) == [
        {"params.yaml": ["generate.negative_prompt=blurry"]},
        {"params.yaml": ["generate.negative_prompt=low\\ quality"]},  # Hydra's escaped space
    ]
    with pytest.raises(InvalidArgumentError, match="without `--queue`"):
        apply_with_dvc(tmp_path, unquoted)

    values = [shlex.split(s)[1] for s in (comma, braces, prompts)]
    assert [o.is_sweep_override() for o in to_hydra_overrides(values)] == [False] * 3
    params = load_params(apply_with_dvc(tmp_path, values))
    assert params.generate.negative_prompt == "blurry, low quality"
    assert params.class_images.prompt == "a photo of {class_noun}"
    assert params.generate.prompts == ("a photo of {identifier} {class_noun} in the snow",)

    with pytest.raises(InvalidArgumentError, match="Invalid `--set-param` value"):
        apply_overrides(tmp_path / "params.yaml", ["class_images.prompt=a photo of {class_noun}"])


# --- internal links -----------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_internal_links_resolve():
    assert slug("Setting params with `-S`: what needs quoting") == (
        "setting-params-with--s-what-needs-quoting"
    )
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def _evidence_script():
    spec = importlib.util.spec_from_file_location("evidence", REPO / "benchmarks/evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evidence_script_runs_the_readme_profile(tmp_path):
    """benchmarks/evidence.py queues the README's evidence profile: its parts together list the
    README's overrides and every draw, and each part's overrides load."""
    evidence = _evidence_script()
    readme = [c for c in commands((REPO / "README.md").read_text()) if "epochs=60" in c]
    assert readme, "README shows no evidence-profile command"
    documented = sorted(set_params(readme[0])[0])
    assert sorted(evidence.overrides(evidence.DRAWS, [])[1::2]) == documented
    parts = evidence.groups(evidence.DRAWS, 2)
    assert sorted(d for part in parts for d in part) == evidence.DRAWS and len(parts) == 2
    for draws in parts:
        load_params(apply_with_dvc(tmp_path, evidence.overrides(draws, [])[1::2]))


def test_evidence_script_extra_override_replaces_the_profiles_key(tmp_path):
    """`--set train_detector.seeds=[42]` replaces the profile's seeds (DVC refuses a key given
    twice) and the result loads."""
    evidence = _evidence_script()
    values = evidence.overrides([0, 1], ["train_detector.seeds=[42]", "generate.strength=0.4"])
    values = values[1::2]
    assert [v for v in values if v.startswith("train_detector.seeds=")] == [
        "train_detector.seeds=[42]"
    ]
    params = load_params(apply_with_dvc(tmp_path, values))
    assert list(params.train_detector.seeds) == [42]
    assert params.generate.strength == 0.4


def test_embedded_dataset_card_counts_match_the_files():
    """data/raw/README.md's tile and box counts and its per-photo tile list are the files'
    (its box count once said 1453: `wc -l` misses label files without a final newline)."""
    raw = REPO / "data/raw"
    card = (raw / "README.md").read_text()
    labels = sorted((raw / "labels").glob("*.txt"))
    boxes = sum(len([line for line in p.read_text().splitlines() if line.strip()]) for p in labels)
    tiles, card_boxes = map(
        int, re.search(r"(\d+) tiles .*?with (\d+) `apple` boxes", card).groups()
    )
    assert (tiles, card_boxes) == (len(labels), boxes)
    listed = dict(re.findall(r"- `(\S+)`: (\d+) tiles", card))
    photos = Counter(label.stem.rsplit("_", 1)[0] for label in labels)
    assert {photo: int(n) for photo, n in listed.items()} == photos


def _collected_run(
    folder: Path, overrides: list[str], scores: dict[str, list[float]], first_draw: int = 0
) -> Path:
    """A collected evidence run's two files the recipes table reads: units (draw d, seed 42)."""
    folder.mkdir(parents=True)
    provenance = {"overrides": overrides, "commit": "5a55b9caea78698e6af1da55f9c113877453a5d9"}
    (folder / "provenance.json").write_text(json.dumps(provenance))
    rows = ["variant,draw,seed,map50_95", "real,,42,0.33"]
    for variant, values in scores.items():
        rows += [f"{variant},{first_draw + d},42,{value}" for d, value in enumerate(values)]
    (folder / "detection_runs.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_evidence_recipes_table_pairs_runs_only_over_identical_handful_detectors(tmp_path):
    evidence = _evidence_script()
    handful = [0.25, 0.27, 0.22, 0.23]
    plain = _collected_run(
        tmp_path / "plain",
        evidence.PROFILE,
        {"handful": handful, "handful-synthetic": [0.24, 0.26, 0.22, 0.22]},
    )
    # the residual recipe in two parts (draws 0-1, 2-3), the second generating more images
    residual = [*evidence.PROFILE, "generate.vae_residual=true"]
    parts = [
        _collected_run(
            tmp_path / f"residual{i}",
            [*residual, *(["generate.num_images=80"] if i else [])],
            {
                "handful": handful[2 * i : 2 * i + 2],
                "handful-synthetic": [0.27, 0.29, 0.25, 0.26][2 * i : 2 * i + 2],
                "handful-copy-paste": [0.26, 0.28, 0.23, 0.24][2 * i : 2 * i + 2],
            },
            first_draw=2 * i,
        )
        for i in (0, 1)
    ]
    rows = evidence.recipes([plain, *parts], tmp_path / "out")
    comparisons = [(row["recipe"], row["comparison"], row["units"]) for row in rows]
    assert comparisons == [
        ("params.yaml at 5a55b9c", "handful-synthetic - handful", 4),
        ("generate.vae_residual=true", "handful-copy-paste - handful", 4),
        ("generate.vae_residual=true", "handful-copy-paste - handful-synthetic", 4),
        ("generate.vae_residual=true", "handful-synthetic - handful", 4),
        (
            "generate.vae_residual=true vs params.yaml at 5a55b9c",
            "handful-synthetic (generate.vae_residual=true) - handful-synthetic (params.yaml at"
            " 5a55b9c)",
            4,
        ),
    ]
    assert rows[-1]["diff"] == pytest.approx(0.0325)
    tested = [row for row in rows if row["p_value"] is not None]
    assert all(row["p_holm"] >= row["p_value"] for row in tested)
    table = (tmp_path / "out" / "recipes.md").read_text().splitlines()
    assert (
        len(table) == 2 + len(rows)
        and "| params.yaml at 5a55b9c | handful-synthetic - handful | 4 |" in table[2]
    )
    # another handful (another draw's bits) is another unit: the recipes are not paired
    other = _collected_run(
        tmp_path / "other",
        evidence.PROFILE,
        {"handful": [0.25, 0.27, 0.22, 0.24], "handful-synthetic": [0.24, 0.26, 0.22, 0.22]},
    )
    rows = evidence.recipes([other, *parts], tmp_path / "out2")
    assert not any(" vs " in row["recipe"] for row in rows)
    # two parts giving one unit two scores are not one run
    clash = _collected_run(tmp_path / "clash", evidence.PROFILE, {"handful": [0.3]})
    with pytest.raises(SystemExit, match="not 0.25"):
        evidence.recipes([plain, clash], tmp_path / "out3")


def test_readme_recipe_table_is_the_generated_one(tmp_path):
    """The README's recipe table is metrics/evidence/recipes.md as `benchmarks/evidence.py
    recipes` wrote it, and that file is what the collected runs give (not typed by hand)."""
    table = (REPO / "metrics/evidence/recipes.md").read_text()
    assert table in (REPO / "README.md").read_text()
    runs = sorted(p.parent for p in (REPO / "metrics").glob("evidence*/**/provenance.json"))
    _evidence_script().recipes(runs, tmp_path)
    assert (tmp_path / "recipes.md").read_text() == table
