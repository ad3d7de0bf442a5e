// Signatures from microsoft/onnxruntime java/src/main/java/ai/onnxruntime/OrtSession.java
// (tag v1.32.0 not readable here; unchanged in every version read, 1.1x sources to a recent OrtEpDevice-era build: see compile_check/README.md).
// Compile-check stub: signatures only, no behaviour.
package ai.onnxruntime;

public class OrtSession implements AutoCloseable {
    OrtSession() { throw new RuntimeException("Stub!"); } // real constructors are package-private/private
    public Result run(java.util.Map<String, ? extends OnnxTensorLike> inputs) throws OrtException { throw new RuntimeException("Stub!"); }
    @Override public void close() throws OrtException { throw new RuntimeException("Stub!"); }

    public static class SessionOptions implements AutoCloseable {
        public enum OptLevel { NO_OPT, BASIC_OPT, EXTENDED_OPT, LAYOUT_OPT, ALL_OPT; public int getID() { throw new RuntimeException("Stub!"); } }
        public SessionOptions() { throw new RuntimeException("Stub!"); }
        public void setOptimizationLevel(OptLevel level) throws OrtException { throw new RuntimeException("Stub!"); }
        public void setIntraOpNumThreads(int numThreads) throws OrtException { throw new RuntimeException("Stub!"); }
        public void setOptimizedModelFilePath(String outputPath) throws OrtException { throw new RuntimeException("Stub!"); }
        public void addConfigEntry(String configKey, String configValue) throws OrtException { throw new RuntimeException("Stub!"); }
        public java.util.Map<String, String> getConfigEntries() { throw new RuntimeException("Stub!"); }
        @Override public void close() { throw new RuntimeException("Stub!"); }
    }

    public static class Result implements AutoCloseable, Iterable<java.util.Map.Entry<String, OnnxValue>> {
        Result() { throw new RuntimeException("Stub!"); } // real constructor is package-private
        public OnnxValue get(int index) { throw new RuntimeException("Stub!"); }
        public java.util.Optional<OnnxValue> get(String key) { throw new RuntimeException("Stub!"); }
        public int size() { throw new RuntimeException("Stub!"); }
        @Override public java.util.Iterator<java.util.Map.Entry<String, OnnxValue>> iterator() { throw new RuntimeException("Stub!"); }
        @Override public void close() { throw new RuntimeException("Stub!"); }
    }
}
