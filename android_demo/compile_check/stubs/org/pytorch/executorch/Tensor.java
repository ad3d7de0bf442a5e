// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/Tensor.kt (Kotlin; `open val dataAsFloatArray` is getDataAsFloatArray(), companion @JvmStatic are statics).
// Compile-check stub: signatures only, no behaviour (members that need DType are left out).
package org.pytorch.executorch;

public abstract class Tensor {
    Tensor(long[] shape) { throw new RuntimeException("Stub!"); } // Kotlin `internal constructor`: not API

    public final long numel() { throw new RuntimeException("Stub!"); }
    public final long[] shape() { throw new RuntimeException("Stub!"); }
    public float[] getDataAsFloatArray() { throw new RuntimeException("Stub!"); }
    public void copyDataInto(java.nio.FloatBuffer dst) { throw new RuntimeException("Stub!"); }
    public java.nio.Buffer getRawDataBuffer() { throw new RuntimeException("Stub!"); }
    public final byte[] toByteArray() { throw new RuntimeException("Stub!"); }

    public static java.nio.FloatBuffer allocateFloatBuffer(int numElements) { throw new RuntimeException("Stub!"); }
    public static Tensor fromBlob(float[] data, long[] shape) { throw new RuntimeException("Stub!"); }
    public static Tensor fromBlob(java.nio.FloatBuffer data, long[] shape) { throw new RuntimeException("Stub!"); }
    public static long numel(long[] shape) { throw new RuntimeException("Stub!"); }
    public static Tensor fromByteArray(byte[] bytes) { throw new RuntimeException("Stub!"); }
}
