// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package org.pytorch.executorch;
public class Module {
    public static final int LOAD_MODE_FILE = 0, LOAD_MODE_MMAP = 1;
    public static Module load(String modelPath, int loadMode, int numThreads) { throw new RuntimeException("Stub!"); }
    public EValue[] forward(EValue... inputs) { throw new RuntimeException("Stub!"); }
    public int loadMethod(String methodName) { return 0; }
    public void destroy() {}
}
