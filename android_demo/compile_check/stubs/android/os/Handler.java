// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.os;
public class Handler { public Handler(Looper looper) {} public final boolean post(Runnable r) { throw new RuntimeException("Stub!"); } }
