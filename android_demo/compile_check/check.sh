#!/bin/sh
# Compile the app's Java (app/ and shira-core/) on the host against stubs of the Android, ONNX Runtime and
# ExecuTorch API signatures it calls (compile_check/stubs). Catches type and syntax errors in code no CI here
# can build with the real SDK; see compile_check/README.md for what it does not check. Needs a JDK.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${SHIRA_JAVA_OUT:-$(mktemp -d)}/compile_check
mkdir -p "$out"
javac --release 11 -Xlint:all -Xlint:-options -Xlint:-serial -Werror -encoding UTF-8 -d "$out" \
    $(find "$here/compile_check/stubs" "$here/shira-core/src/main/java" "$here/app/src/main/java" -name '*.java')
echo "app compiles against the API stubs: $(find "$out/org/shira/demo" -name '*.class' | wc -l) classes"
