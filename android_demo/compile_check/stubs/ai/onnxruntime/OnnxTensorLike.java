// Signatures from microsoft/onnxruntime java/src/main/java/ai/onnxruntime/OnnxTensorLike.java
// (tag v1.32.0 not readable here; unchanged in every version read, 1.1x sources to a recent OrtEpDevice-era build: see compile_check/README.md).
// Compile-check stub: signatures only, no behaviour.
package ai.onnxruntime;

public abstract class OnnxTensorLike implements OnnxValue {
    OnnxTensorLike() { throw new RuntimeException("Stub!"); } // real constructor is package-private
}
