// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package ai.onnxruntime;
public class OnnxTensor extends OnnxTensorLike {
    public static OnnxTensor createTensor(OrtEnvironment env, java.nio.FloatBuffer data, long[] shape) throws OrtException { throw new RuntimeException("Stub!"); }
    public java.nio.FloatBuffer getFloatBuffer() { throw new RuntimeException("Stub!"); }
    public Object getValue() throws OrtException { return null; }
    public void close() {}
}
