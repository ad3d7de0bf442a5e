#!/bin/sh
# Build the plain-Java core and run its JUnit tests on the host JVM (no Android SDK, no Gradle, no network).
# Needs a JDK and Debian's junit4 package (/usr/share/java/junit4.jar, hamcrest-core.jar).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${SHIRA_JAVA_OUT:-$(mktemp -d)}
cp="/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"
javac --release 8 -encoding UTF-8 -Xlint:unchecked -Xlint:-options -d "$out/main" $(find "$here/src/main/java" -name '*.java')
javac --release 11 -encoding UTF-8 -cp "$out/main:$cp" -d "$out/test" $(find "$here/src/test/java" -name '*.java')
cd "$here"
java -Dshira.vectors="$here/../../tests/vectors" -cp "$out/main:$out/test:$cp" org.junit.runner.JUnitCore \
    $(cd src/test/java && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g')
