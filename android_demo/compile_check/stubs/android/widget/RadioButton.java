// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class RadioButton extends CompoundButton { public RadioButton(android.content.Context context) { super(context); } }
