// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package org.pytorch.executorch;
public abstract class Tensor {
    public static java.nio.FloatBuffer allocateFloatBuffer(int numElements) { throw new RuntimeException("Stub!"); }
    public static Tensor fromBlob(java.nio.FloatBuffer data, long[] shape) { throw new RuntimeException("Stub!"); }
    public float[] getDataAsFloatArray() { throw new RuntimeException("Stub!"); }
}
