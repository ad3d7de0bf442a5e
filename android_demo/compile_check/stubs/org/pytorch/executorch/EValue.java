// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/EValue.kt (Kotlin `class`, so final; companion @JvmStatic from()/optionalNone() are statics).
// Compile-check stub: signatures only, no behaviour.
package org.pytorch.executorch;

public final class EValue {
    private EValue() { throw new RuntimeException("Stub!"); }

    public boolean isNone() { throw new RuntimeException("Stub!"); }
    public boolean isTensor() { throw new RuntimeException("Stub!"); }
    public Tensor toTensor() { throw new RuntimeException("Stub!"); }
    public boolean toBool() { throw new RuntimeException("Stub!"); }
    public long toInt() { throw new RuntimeException("Stub!"); }
    public double toDouble() { throw new RuntimeException("Stub!"); }
    public String toStr() { throw new RuntimeException("Stub!"); }

    public static EValue optionalNone() { throw new RuntimeException("Stub!"); }
    public static EValue from(Tensor tensor) { throw new RuntimeException("Stub!"); }
    public static EValue from(boolean value) { throw new RuntimeException("Stub!"); }
    public static EValue from(long value) { throw new RuntimeException("Stub!"); }
    public static EValue from(double value) { throw new RuntimeException("Stub!"); }
    public static EValue from(String value) { throw new RuntimeException("Stub!"); }
}
