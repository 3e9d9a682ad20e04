#include <iostream>
int main() { std::cout << "qtrain\n"; }
