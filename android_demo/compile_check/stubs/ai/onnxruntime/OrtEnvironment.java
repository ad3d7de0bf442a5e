// Signatures from microsoft/onnxruntime java/src/main/java/ai/onnxruntime/OrtEnvironment.java
// (tag v1.32.0 not readable here; unchanged in every version read, 1.1x sources to a recent OrtEpDevice-era build: see compile_check/README.md).
// Compile-check stub: signatures only, no behaviour.
package ai.onnxruntime;

public final class OrtEnvironment implements AutoCloseable {
    private OrtEnvironment() { throw new RuntimeException("Stub!"); }
    public static OrtEnvironment getEnvironment() { throw new RuntimeException("Stub!"); }
    public OrtSession createSession(String modelPath, OrtSession.SessionOptions options) throws OrtException { throw new RuntimeException("Stub!"); }
    public OrtSession createSession(byte[] modelArray, OrtSession.SessionOptions options) throws OrtException { throw new RuntimeException("Stub!"); }
    @Override public void close() { throw new RuntimeException("Stub!"); } // a no-op since ORT 1.11; declares no exception
}
