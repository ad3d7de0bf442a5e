// Compile-check stub: the signatures the app calls, as declared by the real API (see compile_check/README.md); no behaviour.
package android.widget;
public class SeekBar extends android.view.View {
    public interface OnSeekBarChangeListener {
        void onProgressChanged(SeekBar seekBar, int progress, boolean fromUser);
        void onStartTrackingTouch(SeekBar seekBar);
        void onStopTrackingTouch(SeekBar seekBar);
    }
    public SeekBar(android.content.Context context) { super(context); }
    public synchronized void setMax(int max) {}
    public void setOnSeekBarChangeListener(OnSeekBarChangeListener l) {}
}
