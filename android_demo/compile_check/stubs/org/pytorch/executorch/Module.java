// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/Module.kt (Kotlin; companion @JvmStatic/@JvmOverloads load() and const vals seen as Java statics).
// Compile-check stub: signatures only, no behaviour.
package org.pytorch.executorch;

public class Module implements java.io.Closeable {
    public static final int LOAD_MODE_FILE = 0;
    public static final int LOAD_MODE_MMAP = 1;
    public static final int LOAD_MODE_MMAP_USE_MLOCK = 2;
    public static final int LOAD_MODE_MMAP_USE_MLOCK_IGNORE_ERRORS = 3;

    private Module() { throw new RuntimeException("Stub!"); }

    public static Module load(String modelPath) { throw new RuntimeException("Stub!"); }
    public static Module load(String modelPath, int loadMode) { throw new RuntimeException("Stub!"); }
    public static Module load(String modelPath, int loadMode, int numThreads) { throw new RuntimeException("Stub!"); }
    public static Module load(String modelPath, BackendOptionsMap options) { throw new RuntimeException("Stub!"); }
    public static Module load(String modelPath, BackendOptionsMap options, int loadMode) { throw new RuntimeException("Stub!"); }
    public static Module load(String modelPath, BackendOptionsMap options, int loadMode, int numThreads) { throw new RuntimeException("Stub!"); }

    public EValue[] forward(EValue... inputs) { throw new RuntimeException("Stub!"); }
    public EValue[] execute(String methodName, EValue... inputs) { throw new RuntimeException("Stub!"); }
    public void loadMethod(String methodName) { throw new RuntimeException("Stub!"); }
    public String[] getMethods() { throw new RuntimeException("Stub!"); }
    public String[] readLogBuffer() { throw new RuntimeException("Stub!"); }
    public static String[] readLogBufferStatic() { throw new RuntimeException("Stub!"); }
    public boolean etdump() { throw new RuntimeException("Stub!"); }
    public boolean etdump(String outputPath) { throw new RuntimeException("Stub!"); }
    public void destroy() { throw new RuntimeException("Stub!"); }
    @Override public void close() { throw new RuntimeException("Stub!"); }
}
