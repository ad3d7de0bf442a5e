// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/BackendOptionsMap.kt (`class BackendOption(val key: String, val value: Int)`: final, getters getKey()/getValue()).
// Compile-check stub: signatures only, no behaviour.
package org.pytorch.executorch;

public final class BackendOption {
    public BackendOption(String key, int value) { throw new RuntimeException("Stub!"); }
    public String getKey() { throw new RuntimeException("Stub!"); }
    public int getValue() { throw new RuntimeException("Stub!"); }
}
