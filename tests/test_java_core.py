"""The Android app's plain-Java core, built and unit-tested (JUnit) on the host JVM against tests/vectors."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_java_core_junit_passes(tmp_path):
    assert shutil.which("javac") and Path("/usr/share/java/junit4.jar").exists(), \
        "needs a JDK and Debian's junit4 package (.ci/run installs them)"
    r = subprocess.run(["sh", str(ROOT / "android_demo/shira-core/run_host_tests.sh")], capture_output=True, text=True,
                       timeout=600, env={"PATH": "/usr/bin:/bin:/usr/local/bin", "SHIRA_JAVA_OUT": str(tmp_path)})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "OK (" in out, out[-3000:]
