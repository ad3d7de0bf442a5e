// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.view;
public class View {
    public static final int VISIBLE = 0, INVISIBLE = 4, GONE = 8;
    public interface OnClickListener { void onClick(View v); }
    public interface OnApplyWindowInsetsListener { WindowInsets onApplyWindowInsets(View v, WindowInsets insets); }
    public View(android.content.Context context) {}
    public void setPadding(int left, int top, int right, int bottom) {}
    public void setOnApplyWindowInsetsListener(OnApplyWindowInsetsListener listener) {}
    public void setOnClickListener(OnClickListener l) {}
    public void setVisibility(int visibility) {}
    public void setId(int id) {}
}
