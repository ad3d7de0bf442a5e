// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.content.res;
public final class AssetManager {
    public java.io.InputStream open(String fileName) throws java.io.IOException { throw new RuntimeException("Stub!"); }
    public String[] list(String path) throws java.io.IOException { throw new RuntimeException("Stub!"); }
}
