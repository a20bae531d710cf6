"""docs/paper-notes.md is what the code cites for the paper: every `docs/paper-notes.md#anchor` in the repository
names one of its headings, and no source cites the digest that is not in the repository."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("models", "rl", "analysis", "benchmarks", "integrations", "workflow", "config", "scripts", "tests",
           "examples", "docs")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def cited_files():
    files = [ROOT / "README.md", ROOT / "Snakefile"]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".smk", ".yaml", ".md", ".sh")]
    return [p for p in files if p.is_file()]


def test_every_paper_notes_anchor_names_a_heading():
    notes = (ROOT / "docs" / "paper-notes.md").read_text(encoding="utf-8")
    anchors = {github_slug(m) for m in re.findall(r"^#+ (.+)$", notes, flags=re.M)}
    cited = {}
    for path in cited_files():
        if path.name == "test_paper_notes.py":
            continue
        for anchor in re.findall(r"paper-notes\.md#([\w-]+)", path.read_text(encoding="utf-8")):
            cited.setdefault(anchor, path.relative_to(ROOT))
    assert len(cited) >= 10
    missing = {a: str(p) for a, p in cited.items() if a not in anchors}
    assert not missing, f"anchors cited but not headings of docs/paper-notes.md: {missing}"


def test_github_slug():
    assert github_slug("Unknowns and our values") == "unknowns-and-our-values"
    assert github_slug("SAC on beliefs") == "sac-on-beliefs"
    assert github_slug("Smoothing ELBO") == "smoothing-elbo"


def test_no_source_cites_the_digest():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in cited_files() if p.name != "test_paper_notes.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if re.search(r"digest §", line)]
    assert not hits, f"cite the paper or docs/paper-notes.md instead of the digest: {hits}"
