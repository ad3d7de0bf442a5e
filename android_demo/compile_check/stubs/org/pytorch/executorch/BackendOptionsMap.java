// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/BackendOptionsMap.kt (Kotlin `class`, so final; added after v1.4.1, used by Module.load(path, options, ...)).
// Compile-check stub: signatures only, no behaviour.
package org.pytorch.executorch;

public final class BackendOptionsMap {
    public BackendOptionsMap() { throw new RuntimeException("Stub!"); }
    public BackendOptionsMap setInt(String backendName, String key, int value) { throw new RuntimeException("Stub!"); }
    public boolean isEmpty() { throw new RuntimeException("Stub!"); }
}
