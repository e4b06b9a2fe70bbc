/* A stand-in for FHI-aims built as an ASI shared library: a Lennard-Jones cluster in Hartree and Bohr.
 *
 * It implements every symbol asi4py 1.4.9 binds (see /work/shared/ASI_API.md). Like FHI-aims it reads
 * geometry.in (atom count) and control.in (sc_iter_limit) from the working directory in ASI_init, takes
 * coordinates (Bohr) from ASI_set_atom_coords / ASI_set_geometry, and computes energy (Ha) and forces
 * (Ha/Bohr) in ASI_run. The pair loop is split over the ranks of the communicator given to ASI_init and
 * summed with MPI_Allreduce, so every rank ends up with the same numbers. For a periodic structure
 * (ASI_set_geometry with a lattice) ASI_stress returns the analytic virial stress of the same pair sum,
 * sigma = -(1/V) sum_pairs f (x) d (Ha/Bohr^3), i.e. (1/V) dE/dstrain of the energy it reports; the pair sum
 * itself stays that of a cluster (no periodic images).
 *
 * Knobs for tests, read from control.in:
 *   sc_iter_limit N      with N < STANDIN_MIN_SCF_ITERATIONS the "SCF" is reported as not converged;
 *   standin_fail_run     ASI_run leaves NaN energy and forces (a library that silently fails).
 */

#include <math.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keep in step with tests/asi_build.py (LJ_EPSILON_HA, LJ_SIGMA_BOHR). */
#define LJ_EPSILON_HA 0.01
#define LJ_SIGMA_BOHR 5.0
#define STANDIN_MIN_SCF_ITERATIONS 2
#define LINE_LENGTH 1024

static MPI_Comm comm = MPI_COMM_NULL;
static int rank = 0, nranks = 1;
static int n_atoms = 0;
static double *coords = NULL; /* n_atoms x 3, Bohr */
static double *forces = NULL; /* n_atoms x 3, Ha/Bohr */
static double energy = 0.0;
static double stress[9]; /* 3 x 3, Ha/Bohr^3, row-major */
static double volume = 0.0; /* Bohr^3; 0 for a cluster (no lattice given): no stress */
static bool scf_converged = false;
static bool fail_run = false;
static int n_runs = 0;
static FILE *out = NULL;

typedef void (*dmhs_callback_t)(void *, int, int, int *, double *, void *);
typedef void (*esp_callback_t)(void *, int, const double *, double *, double *);

static int count_geometry_atoms(void) {
    FILE *f = fopen("geometry.in", "r");
    char line[LINE_LENGTH];
    int count = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        char word[32];
        if (sscanf(line, "%31s", word) == 1 && (strcmp(word, "atom") == 0 || strcmp(word, "atom_frac") == 0))
            count++;
    }
    fclose(f);
    return count;
}

static void read_control(void) {
    FILE *f = fopen("control.in", "r");
    char line[LINE_LENGTH];
    int sc_iter_limit = 1000;
    fail_run = false;
    if (f) {
        while (fgets(line, sizeof line, f)) {
            char word[64];
            int value;
            if (sscanf(line, "%63s", word) != 1 || word[0] == '#') continue;
            if (strcmp(word, "sc_iter_limit") == 0 && sscanf(line, "%*s %d", &value) == 1) sc_iter_limit = value;
            if (strcmp(word, "standin_fail_run") == 0) fail_run = true;
        }
        fclose(f);
    }
    scf_converged = sc_iter_limit >= STANDIN_MIN_SCF_ITERATIONS;
}

static void resize(int n) {
    if (n == n_atoms && coords) return;
    free(coords);
    free(forces);
    n_atoms = n;
    coords = calloc((size_t)(3 * n + 1), sizeof(double));
    forces = calloc((size_t)(3 * n + 1), sizeof(double));
}

int ASI_flavour(void) { return 1; }

void ASI_init(const char *inputpath, const char *outputfile, int mpi_fcomm) {
    (void)inputpath;
    MPI_Comm given = MPI_Comm_f2c(mpi_fcomm);
    MPI_Comm_dup(given, &comm);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &nranks);
    resize(count_geometry_atoms());
    read_control();
    n_runs = 0;
    if (rank == 0 && outputfile && outputfile[0]) {
        out = fopen(outputfile, "w");
        if (out) fprintf(out, "ASI stand-in (Lennard-Jones) on %d rank(s), %d atom(s)\n", nranks, n_atoms);
    }
}

static void set_coords(const double *xyz, int n) {
    resize(n);
    memcpy(coords, xyz, sizeof(double) * 3 * (size_t)n);
}

void ASI_set_atom_coords(const double *xyz, int n) {
    set_coords(xyz, n);
    volume = 0.0;
}

static double determinant(const double *m) {
    return m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
         + m[2] * (m[3] * m[7] - m[4] * m[6]);
}

void ASI_set_geometry(const double *xyz, int n, const double *lattice) {
    set_coords(xyz, n); /* the lattice only gives the volume of the stress; the pair sum has no images */
    volume = lattice ? fabs(determinant(lattice)) : 0.0;
}

void ASI_run(void) {
    /* buffer = forces (3n), the energy, then the 9 virial components sum_pairs f (x) d, reduced in one call */
    int n_values = 3 * n_atoms + 1 + 9;
    double *local = calloc((size_t)n_values, sizeof(double));
    double *total = calloc((size_t)n_values, sizeof(double));
    double *virial = local + 3 * n_atoms + 1;
    long pair = 0;
    for (int i = 0; i < n_atoms; i++) {
        for (int j = i + 1; j < n_atoms; j++, pair++) {
            if (pair % nranks != rank) continue;
            double d[3], r2 = 0.0;
            for (int k = 0; k < 3; k++) {
                d[k] = coords[3 * i + k] - coords[3 * j + k];
                r2 += d[k] * d[k];
            }
            double s6 = pow(LJ_SIGMA_BOHR * LJ_SIGMA_BOHR / r2, 3);
            local[3 * n_atoms] += 4.0 * LJ_EPSILON_HA * (s6 * s6 - s6);
            /* F_i = -dE/dr_i = 24 eps (2 s12 - s6) / r2 * d */
            double scale = 24.0 * LJ_EPSILON_HA * (2.0 * s6 * s6 - s6) / r2;
            for (int k = 0; k < 3; k++) {
                local[3 * i + k] += scale * d[k];
                local[3 * j + k] -= scale * d[k];
                for (int l = 0; l < 3; l++) virial[3 * k + l] += scale * d[k] * d[l];
            }
        }
    }
    MPI_Allreduce(local, total, n_values, MPI_DOUBLE, MPI_SUM, comm);
    memcpy(forces, total, sizeof(double) * 3 * (size_t)n_atoms);
    energy = total[3 * n_atoms];
    /* dE/dstrain_kl = -sum_pairs f_k d_l, so sigma = -(1/V) sum_pairs f (x) d */
    for (int k = 0; k < 9; k++) stress[k] = volume > 0.0 ? -total[3 * n_atoms + 1 + k] / volume : 0.0;
    free(local);
    free(total);
    if (fail_run) {
        energy = NAN;
        for (int k = 0; k < 3 * n_atoms; k++) forces[k] = NAN;
        for (int k = 0; k < 9; k++) stress[k] = NAN;
    }
    n_runs++;
    if (out) {
        fprintf(out, "run %d: energy %.12f Ha, converged %d\n", n_runs, energy, (int)scf_converged);
        fflush(out);
    }
}

void ASI_finalize(void) {
    if (out) {
        fprintf(out, "finalize after %d run(s)\n", n_runs);
        fclose(out);
        out = NULL;
    }
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    comm = MPI_COMM_NULL;
    free(coords);
    free(forces);
    coords = forces = NULL;
    n_atoms = 0;
}

int ASI_n_atoms(void) { return n_atoms; }
double ASI_energy(void) { return energy; }
const double *ASI_forces(void) { return forces; }
const double *ASI_stress(void) { return volume > 0.0 ? stress : NULL; }
bool ASI_is_scf_converged(void) { return scf_converged; }
const double *ASI_atomic_charges(int scheme) { (void)scheme; return NULL; }

void ASI_calc_esp(int n, const double *points, double *esp, double *esp_grad) {
    (void)points;
    memset(esp, 0, sizeof(double) * (size_t)n);
    if (esp_grad) memset(esp_grad, 0, sizeof(double) * 3 * (size_t)n);
}

void ASI_register_dm_callback(dmhs_callback_t cb, void *aux) { (void)cb; (void)aux; }
void ASI_register_overlap_callback(dmhs_callback_t cb, void *aux) { (void)cb; (void)aux; }
void ASI_register_hamiltonian_callback(dmhs_callback_t cb, void *aux) { (void)cb; (void)aux; }
void ASI_register_external_potential(esp_callback_t cb, void *aux) { (void)cb; (void)aux; }
bool ASI_is_hamiltonian_real(void) { return true; }
int ASI_get_basis_size(void) { return 0; }
int ASI_get_nspin(void) { return 1; }
int ASI_get_nkpts(void) { return 1; }
int ASI_get_n_local_ks(void) { return 0; }
int ASI_get_local_ks(int *local_ks) { (void)local_ks; return 0; }
