// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.os;
public final class Looper { public static Looper getMainLooper() { throw new RuntimeException("Stub!"); } }
