// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class Button extends TextView { public Button(android.content.Context context) { super(context); } }
