package org.shira.core;

/** A blob that must be refused: the message names the file and, where there is one, the tensor. */
public class AdapterFormatException extends Exception {
    public AdapterFormatException(String message) { super(message); }
}
