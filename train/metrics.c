#include "metrics.h"

#include <math.h>
#include <stdlib.h>

#include "../core/check.h"

void eval_add_batch(EvalAcc *e, const int *pred, const real *nll, const int *targets, long n,
                    int nseq, int V) {
    long *tp = xcalloc((size_t)V, sizeof(long)), *fn = xcalloc((size_t)V, sizeof(long)),
         *fp = xcalloc((size_t)V, sizeof(long));
    double bnll = 0;
    long bscored = 0;
    for (long i = 0; i < n; i++) {
        int y = targets[i];
        if (y < 0) continue;
        int p = pred[i];
        bscored++;
        bnll += nll[i];
        if (p == y) tp[y]++;
        else fn[y]++, fp[p]++;
    }
    double sum = 0;
    int classes = 0;
    for (int c = 0; c < V; c++) {
        if (tp[c] + fp[c] + fn[c] == 0) continue;
        classes++;
        sum += tp[c] + fn[c] ? (double)tp[c] / (double)(tp[c] + fn[c]) : 0.0;
    }
    if (bscored > 0) {
        e->acc_sum += (classes ? sum / classes : 0) * nseq;
        e->ppl_sum += exp(bnll / (double)bscored) * nseq;
        e->seqs += nseq;
    }
    for (int c = 0; c < V; c++) e->correct += tp[c];
    e->scored += bscored;
    e->nll_sum += bnll;
    free(tp), free(fn), free(fp);
}

double eval_mad_acc(const EvalAcc *e) { return e->seqs ? e->acc_sum / (double)e->seqs : 0; }
double eval_token_acc(const EvalAcc *e) { return e->scored ? (double)e->correct / (double)e->scored : 0; }
double eval_loss(const EvalAcc *e) { return e->scored ? e->nll_sum / (double)e->scored : 0; }
double eval_ppl(const EvalAcc *e) { return e->seqs ? e->ppl_sum / (double)e->seqs : 0; }
