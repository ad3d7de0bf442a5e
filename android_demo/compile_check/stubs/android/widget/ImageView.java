// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class ImageView extends android.view.View {
    public enum ScaleType { MATRIX, FIT_XY, FIT_START, FIT_CENTER, FIT_END, CENTER, CENTER_CROP, CENTER_INSIDE }
    public ImageView(android.content.Context context) { super(context); }
    public void setImageBitmap(android.graphics.Bitmap bm) {}
    public void setAdjustViewBounds(boolean adjustViewBounds) {}
    public void setScaleType(ScaleType scaleType) {}
}
