"""The previous / next / lab links at the foot of each lesson are generated; stale ones fail here."""
from helpers import nav


def test_every_lesson_ends_with_current_navigation(capsys):
    rc = nav.main(["--check"])
    assert rc == 0, capsys.readouterr().out


def test_navigation_links_point_at_files_that_exist():
    import re

    for path, (nb, _) in nav.plan().items():
        text = nb.cells[-1].source
        links = re.findall(r"\]\(([^)]+)\)", text)
        assert links, f"{path.name}: navigation cell has no links"
        for link in links:
            assert (path.parent / link).resolve().exists(), f"{path.name} links to missing {link}"
