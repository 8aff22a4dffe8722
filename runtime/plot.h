/* Training curves as SVG, written by hand (no plotting library): RUN_DIR/log.csv in, one panel of
 * losses (meta_loss per step, faint, with its moving average; val_loss when logged) and one of
 * accuracies (meta_acc the same way; val_acc at the validation steps) out. Regression runs, which
 * log no accuracy, get the loss panel alone. */
#ifndef MAMLC_PLOT_H
#define MAMLC_PLOT_H

#include "error.h"

/* Reads the log (columns found by their header names; `step` and `meta_loss` are required) and
 * writes the SVG atomically (temporary file, rename). Errors name the file and line. */
int plot_log(const char *log_csv, const char *svg_path, const char *title, MamlError *err);

#endif
