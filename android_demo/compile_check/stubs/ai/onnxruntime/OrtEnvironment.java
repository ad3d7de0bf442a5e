// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package ai.onnxruntime;
public final class OrtEnvironment implements AutoCloseable {
    public static OrtEnvironment getEnvironment() { throw new RuntimeException("Stub!"); }
    public OrtSession createSession(byte[] modelArray, OrtSession.SessionOptions options) throws OrtException { throw new RuntimeException("Stub!"); }
    public void close() {}
}
