// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package ai.onnxruntime;
public class OrtException extends Exception { public OrtException(String m) { super(m); } }
