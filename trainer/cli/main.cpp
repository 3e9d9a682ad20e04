// The qtrain executable: everything lives in the verbs (trainer/cli/cli.h).
#include "trainer/cli/cli.h"

int main(int argc, char** argv) { return qtrain::cli::run(std::vector<std::string>(argv + 1, argv + argc)); }
