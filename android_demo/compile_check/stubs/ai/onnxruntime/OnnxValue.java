// Signatures from microsoft/onnxruntime java/src/main/java/ai/onnxruntime/OnnxValue.java
// (tag v1.32.0 not readable here; unchanged in every version read, 1.1x sources to a recent OrtEpDevice-era build: see compile_check/README.md).
// Compile-check stub: signatures only, no behaviour.
package ai.onnxruntime;

public interface OnnxValue extends AutoCloseable {
    Object getValue() throws OrtException;
    @Override void close();
}
