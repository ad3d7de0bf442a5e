// Signatures from microsoft/onnxruntime java/src/main/java/ai/onnxruntime/OnnxTensor.java
// (tag v1.32.0 not readable here; unchanged in every version read, 1.1x sources to a recent OrtEpDevice-era build: see compile_check/README.md).
// Compile-check stub: signatures only, no behaviour.
package ai.onnxruntime;

public class OnnxTensor extends OnnxTensorLike {
    OnnxTensor() { throw new RuntimeException("Stub!"); } // real constructors are package-private
    public static OnnxTensor createTensor(OrtEnvironment env, java.nio.FloatBuffer data, long[] shape) throws OrtException { throw new RuntimeException("Stub!"); }
    public java.nio.FloatBuffer getFloatBuffer() { throw new RuntimeException("Stub!"); }
    @Override public Object getValue() throws OrtException { throw new RuntimeException("Stub!"); }
    @Override public void close() { throw new RuntimeException("Stub!"); }
}
