// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.view;
public abstract class ViewGroup extends View {
    public static class LayoutParams {
        public static final int MATCH_PARENT = -1, WRAP_CONTENT = -2;
        public LayoutParams(int width, int height) {}
    }
    public ViewGroup(android.content.Context context) { super(context); }
    public void addView(View child) {}
    public void addView(View child, LayoutParams params) {}
    public void removeAllViews() {}
}
