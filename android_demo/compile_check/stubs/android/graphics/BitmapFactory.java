// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.graphics;
public class BitmapFactory { public static Bitmap decodeByteArray(byte[] data, int offset, int length) { return null; } }
