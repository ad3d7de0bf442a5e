// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class RadioGroup extends LinearLayout {
    public interface OnCheckedChangeListener { void onCheckedChanged(RadioGroup group, int checkedId); }
    public RadioGroup(android.content.Context context) { super(context); }
    public void check(int id) {}
    public void setOnCheckedChangeListener(OnCheckedChangeListener listener) {}
}
