// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package ai.onnxruntime;
public class OrtSession implements AutoCloseable {
    public Result run(java.util.Map<String, ? extends OnnxTensorLike> inputs) throws OrtException { throw new RuntimeException("Stub!"); }
    public void close() throws OrtException {}
    public static class SessionOptions implements AutoCloseable {
        public enum OptLevel { NO_OPT, BASIC_OPT, EXTENDED_OPT, ALL_OPT }
        public SessionOptions() {}
        public void setOptimizationLevel(OptLevel level) throws OrtException {}
        public void setIntraOpNumThreads(int numThreads) throws OrtException {}
        public void close() {}
    }
    public static class Result implements AutoCloseable, Iterable<java.util.Map.Entry<String, OnnxValue>> {
        public OnnxValue get(int index) { throw new RuntimeException("Stub!"); }
        public java.util.Iterator<java.util.Map.Entry<String, OnnxValue>> iterator() { throw new RuntimeException("Stub!"); }
        public void close() {}
    }
}
