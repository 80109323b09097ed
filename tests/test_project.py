"""The project's own promises: the deployment file is valid Compose, the docs document every
setting, the README gives the commands CI runs and shows the pages as the browser tests see
them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.cli import build_parser
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_docker_compose_is_valid_against_the_compose_specification() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_references_resolve() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mongo", "hapi", "gateway", "load-fixtures"} <= set(services)
    for service in services.values():
        for dependency in service.get("depends_on", []):
            assert dependency in services
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert services["gateway"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    # The demo job runs a real command of the image's entry point, on the mounted fixtures.
    init = services["register-demo"]
    assert init["image"] == services["gateway"]["image"] and init["restart"] == "no"
    args = build_parser().parse_args(init["command"])
    assert args.func.__name__ == "_register_demo" and str(args.fixtures) == "/fixtures"
    assert "./fixtures:/fixtures:ro" in init["volumes"]
    gateway_env = services["gateway"]["environment"]
    for key in gateway_env:
        name = key.removeprefix("FHIR_GATEWAY_").lower()
        assert name in Settings.model_fields, key


def test_the_mongodb_healthcheck_fails_until_the_replica_set_has_a_primary() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["mongo"]["healthcheck"]["test"]
    script = test[test.index("--eval") + 1]
    assert "if (!db.hello().isWritablePrimary) { quit(1) }" in script
    # mongosh runs JavaScript: the script must at least parse.
    done = subprocess.run(
        ["node", "-e", "new Function(process.argv[1])", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_ehr_teams_page_documents_every_setting() -> None:
    page = (ROOT / "docs" / "ehr-teams.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", page, flags=re.MULTILINE))
    assert set(Settings.model_fields) <= documented, set(Settings.model_fields) - documented


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test" in readme and "bash scripts/demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test" in ci


def test_the_readme_shows_the_screenshots_the_browser_tests_take() -> None:
    """Every picture the README shows is committed and is one the browser tests write with
    ``UPDATE_DOC_SCREENSHOTS=1``, and every committed screenshot is shown."""
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"\]\(docs/screenshots/([a-z0-9-]+)\.png\)", readme))
    committed = {p.stem for p in (ROOT / "docs" / "screenshots").glob("*.png")}
    tests = (ROOT / "tests" / "e2e" / "test_account_browser.py").read_text().splitlines()
    taken = {name for line in tests if "doc=" in line for name in re.findall(r'"([a-z-]+)"', line)}
    assert shown, "the README shows no screenshot"
    assert shown == committed, shown ^ committed
    assert shown <= taken, shown - taken


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[_normal(match[1])] = match[2]
    return pins


def test_the_lock_files_satisfy_the_declared_ranges() -> None:
    """CI and the image install the lock files; library users get pyproject's ranges. Every
    direct dependency is locked, at a version its range admits (re-run pip-compile otherwise)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    for lock, extra in (("runtime", []), ("demo", ["embedded"]), ("test", ["test"])):
        pins = _pins(ROOT / "requirements" / f"{lock}.lock")
        wanted = runtime + [
            Requirement(r) for e in extra for r in project["optional-dependencies"][e]
        ]
        for requirement in wanted:
            name = _normal(requirement.name)
            assert name in pins, f"{name} is not in requirements/{lock}.lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"requirements/{lock}.lock pins {name}=={pins[name]}, outside {requirement}"
            )
    assert "multidict" in {r.name for r in runtime}  # imported by the gateway, so declared


def test_every_file_the_packages_read_is_shipped() -> None:
    """The container image installs the packages (not the checkout): every non-Python file in
    them must match ``package-data``, or a page would lose its template or its translation."""
    import fnmatch
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    listed = subprocess.run(
        ["git", "ls-files", "gateway", "smart_auth", "consent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    missing = []
    for name in listed:
        package, _, inside = name.partition("/")
        if name.endswith((".py", ".pot")) or inside.endswith("README.md"):
            continue  # code, and what only developers and translators read
        if not any(fnmatch.fnmatch(inside, pattern) for pattern in package_data[package]):
            missing.append(name)
    assert not missing, missing
