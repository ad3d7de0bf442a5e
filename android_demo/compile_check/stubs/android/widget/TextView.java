// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class TextView extends android.view.View {
    public TextView(android.content.Context context) { super(context); }
    public final void setText(CharSequence text) {}
}
