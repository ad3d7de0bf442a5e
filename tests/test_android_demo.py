"""The Android demo's build files and code, checked on a host with no Android SDK or network: the app compiles
against the API signatures it calls, the Gradle wrapper launches and asks for the pinned distribution, versions
agree with the Python side, staged assets stay out of git, and the app has no safetensors parser of its own."""
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin"}


def test_the_app_compiles_against_the_api_signatures_it_calls(tmp_path):
    assert shutil.which("javac"), "needs a JDK (.ci/run installs it)"
    r = subprocess.run(["sh", str(DEMO / "compile_check/check.sh")], capture_output=True, text=True, timeout=300,
                       env={**ENV, "SHIRA_JAVA_OUT": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    names = {p.name for p in (tmp_path / "compile_check/org/shira/demo").glob("*.class")}
    assert {"MainActivity.class", "OrtStyleEngine.class", "ExecuTorchStyleEngine.class"} <= names


def test_gradle_wrapper_launches_and_asks_for_the_pinned_distribution(tmp_path):
    """The committed wrapper (script + jar) starts on this JDK, reads its properties and fetches the distribution
    they name, checked against the SHA-256 they pin. Here the URL is pointed at a missing local file, so the
    test needs no network and downloads nothing."""
    props = (DEMO / "gradle/wrapper/gradle-wrapper.properties").read_text()
    url = re.search(r"^distributionUrl=(.*)$", props, re.M).group(1).replace("\\:", ":")
    version = re.search(r"gradle-(\d+)\.(\d+)(?:\.\d+)?-bin\.zip$", url)
    assert url.startswith("https://services.gradle.org/distributions/") and version
    assert (int(version[1]), int(version[2])) >= (8, 9)  # what AGP 8.7 needs
    assert re.search(r"^distributionSha256Sum=[0-9a-f]{64}$", props, re.M)
    jar = DEMO / "gradle/wrapper/gradle-wrapper.jar"
    with zipfile.ZipFile(jar) as z:
        assert "org/gradle/wrapper/GradleWrapperMain.class" in z.namelist()
    copy = tmp_path / "demo"
    (copy / "gradle/wrapper").mkdir(parents=True)
    shutil.copy(DEMO / "gradlew", copy / "gradlew")
    shutil.copy(jar, copy / "gradle/wrapper/gradle-wrapper.jar")
    missing = tmp_path / "nowhere" / "gradle-8.9-bin.zip"
    (copy / "gradle/wrapper/gradle-wrapper.properties").write_text(
        props.replace(re.search(r"^distributionUrl=.*$", props, re.M).group(0), f"distributionUrl={missing.as_uri()}"))
    r = subprocess.run(["sh", str(copy / "gradlew"), "--version"], capture_output=True, text=True, timeout=120,
                       cwd=copy, env={**ENV, "GRADLE_USER_HOME": str(tmp_path / "home")})
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"Downloading file:{missing}" in out, out[-2000:]
    assert "FileNotFoundException" in out or "NoSuchFileException" in out, out[-2000:]


def test_versions_agree_with_the_python_side():
    props = dict(line.split("=", 1) for line in (DEMO / "gradle.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    pin = re.search(r'"executorch==([^"]+)"', (ROOT / "runtime/pyproject.toml").read_text()).group(1)
    assert props["executorchVersion"] == pin  # the runtime reads what that exporter writes
    assert re.fullmatch(r"1\.\d+\.\d+", props["ortVersion"])
    bake = (DEMO / "app/src/main/java/org/shira/demo/OnDeviceBake.java").read_text()
    assert f'ORT_VERSION = "{props["ortVersion"]}"' in bake  # the bake cache's key names the ORT the app links
    app = (DEMO / "app/build.gradle").read_text()
    assert 'project(":shira-core")' in app and "${executorchVersion}" in app and "${ortVersion}" in app
    assert 'include ":shira-core"' in (DEMO / "settings.gradle").read_text()


def test_staged_assets_are_ignored_by_git():
    for path in ("android_demo/app/src/main/assets/base/model.pte", "android_demo/app/src/main/assets/photo.png"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert r.returncode == 0, f"{path} is not git-ignored"


def test_the_app_has_no_parser_of_its_own():
    """One safetensors parser: shira-core's. The app hands bytes to PatchableBase and never reads a header."""
    for src in (DEMO / "app/src/main/java").rglob("*.java"):
        text = src.read_text()
        for needle in ("data_offsets", "getLong(0)", "Json.parse"):
            assert needle not in text, f"{src.name} parses {needle} itself"
        assert "catch (Exception e)" not in text or src.name != "MainActivity.java"


@pytest.mark.long
def test_stage_assets_stages_both_engines_files(tmp_path):
    assets = tmp_path / "assets"
    r = subprocess.run(["sh", "android_demo/stage_assets.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**ENV, "SHIRA_ASSETS": str(assets), "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for f in ("base/manifest.json", "base/model.onnx", "base/model_prepacked.onnx", "base/weights.safetensors",
              "base/model.pte", "photo.png"):
        assert (assets / f).stat().st_size > 0, f
    assert sorted(p.name for p in (assets / "styles").glob("*.shira")) == sorted(
        p.name for p in (ROOT / "models/styles").glob("*.shira"))
